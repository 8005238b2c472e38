"Timing helpers shared by the bench scripts (run them as scripts: their folder is on sys.path)."
import time


def best(f, repeat):
    "(result, best wall time of `repeat` runs): the minimum is the least disturbed by other processes."
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); r = f(); ts.append(time.perf_counter() - t)
    return r, min(ts)
