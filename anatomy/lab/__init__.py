"""What the notebooks use around the lessons: tables, the widget explorer, exercise checks, figure helpers."""
