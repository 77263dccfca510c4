"""Reports shared by the data, eval and bench stages: HTML pages, plots, text tables.

Import ``strop.report.html`` directly; matplotlib is loaded only when a plot is drawn.
"""
