"""Peak resident memory of a phase of the process (one model's build, training, evaluation).

Linux only reports a process-wide peak (getrusage's ru_maxrss), which a first, larger model
would set for every model after it; writing "5" to /proc/self/clear_refs resets the kernel's
high-water mark (VmHWM in /proc/self/status), so each phase gets its own peak where allowed.
"""

import resource
from typing import Dict, Optional


def read_status_kb(field: str) -> Optional[int]:
    """A kB field of /proc/self/status (e.g. "VmRSS"), or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _mb(kb: Optional[float]) -> Optional[float]:
    return None if kb is None else kb / 1024.0


class MemoryPhase:
    """Starts a phase: resets VmHWM where Linux allows and notes the resident memory."""

    def __init__(self):
        self.reset_ok = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = True
        except OSError:
            pass
        self.start_rss_kb = read_status_kb("VmRSS")

    def result(self) -> Dict[str, Optional[float]]:
        """MB: the process peak, the phase's peak (None if VmHWM could not be reset) and the
        resident memory at the phase's start."""
        hwm = read_status_kb("VmHWM") if self.reset_ok else None
        return {
            "process_maxrss_mb": _mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
            "phase_peak_rss_mb": _mb(hwm),
            "phase_start_rss_mb": _mb(self.start_rss_kb),
        }
