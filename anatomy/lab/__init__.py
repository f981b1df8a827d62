"""What the notebooks use around the lessons: tables, the live figures, exercise checks, figure helpers, and the
notebooks' static site (``python -m anatomy.lab.site``)."""
