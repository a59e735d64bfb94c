"""One check shared by the concurrency tests."""

import threading

import numpy as np


def assert_concurrent_calls_match_serial(fn, inputs, num_threads=8):
    """Calls fn(inputs[i % len(inputs)]) from num_threads threads at once; each result must
    equal, bit for bit, that of the same call made serially (the same function and input
    must not see another thread's scratch memory or state)."""
    serial = [fn(x) for x in inputs]
    results = [None] * num_threads

    def work(i):
        results[i] = fn(inputs[i % len(inputs)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(num_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, serial[i % len(inputs)])
