"""The classroom side: tables, widgets, exercises, figure helpers, and the notebooks' static site."""
