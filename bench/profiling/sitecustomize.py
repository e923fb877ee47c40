"""Profile every Python process of a benchmark run, every thread of it (bench/profile.py).

With this folder on PYTHONPATH and BENCH_PROFILE_DIR set, each Python process started
then (iotctl, the minimal scripts, the load generators) runs under cProfile from its
start-up on, one profiler per thread (the main thread and every threading.Thread: the
asyncio loop thread, stomp.py's reader, ...), and at exit writes the merged statistics
to BENCH_PROFILE_DIR/PID.prof with its command line in BENCH_PROFILE_DIR/PID.argv.
SIGTERM (how the benchmarks stop a receiver that has not exited yet) exits through
SystemExit so that the profile is written, unless the program sets its own handler;
a process killed otherwise writes nothing. Without BENCH_PROFILE_DIR this does nothing.
"""

import os

_DIR = os.environ.get("BENCH_PROFILE_DIR")

if _DIR:
    import atexit
    import cProfile
    import sys
    import threading

    _profiles = []
    _thread_run = threading.Thread.run

    def _profiled_run(self):
        prof = cProfile.Profile()
        _profiles.append(prof)
        prof.enable()
        try:
            _thread_run(self)
        finally:
            prof.disable()

    threading.Thread.run = _profiled_run

    def _dump():
        import pstats

        _main.disable()
        stats = None
        for prof in _profiles:
            try:
                if stats is None:
                    stats = pstats.Stats(prof)
                else:
                    stats.add(prof)
            except TypeError:  # a thread's profiler that recorded nothing
                continue
        if stats is None:
            return
        pid = os.getpid()
        stats.dump_stats(os.path.join(_DIR, f"{pid}.prof"))
        with open(os.path.join(_DIR, f"{pid}.argv"), "w") as fh:
            fh.write("\0".join(sys.argv))

    import signal

    def _terminated(signum, frame):
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, _terminated)

    _main = cProfile.Profile()
    _profiles.append(_main)
    atexit.register(_dump)
    _main.enable()
