"""What an operator sees of a run: the plan before it (``run_plan``), the progress line and Prometheus metrics
during it (``progress``, ``metrics``), the shadow dense sample's agreement with the unpruned model
(``quality``), and the record and HTML report it leaves (``run_record``, ``report``, ``report_data``,
``report_charts``). Nothing here decides what a run does.
"""
