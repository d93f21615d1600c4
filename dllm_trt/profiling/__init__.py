"""``dllm-trt profile``: latency profiling of the decode loop (timing, report, plots, sweep).

    timing.py   StepTimer: the optional hooks of generate(..., timer=) and the backends' cache sections
    runner.py   prompts, backends, and the measurement of one decode setting
    sweep.py    the --sweep grid and the fastest setting within 1 point of the best exact match
    session.py  one profiling session -> the report dict
    report.py   terminal table, JSON, CSV
    plots.py    PNG plots (matplotlib, Agg)
    memory.py   host peak RSS, device memory
    cli.py      add_profile_commands(subparsers)
"""
from .timing import StepTimer

__all__ = ["StepTimer"]
