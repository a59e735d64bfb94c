"""`python -m tt_keras.info`: what this installation of tt_keras runs with.

Prints one `key: value` line per fact (`--json` prints the same as a JSON object):

  tt_keras            the package version
  tensorflow, keras   the versions in this process (Keras 3 or legacy tf_keras)
  op_library          the op library's path, and whether it exists
  stamp.<key>         every `key: value` line of the library's build stamp (_tt_ops.version);
                      a bare line there is the TensorFlow version it was built for
                      (stamp.tensorflow)
  cuda_archs          the GPU code in the library's .nv_fatbin section, read with objcopy:
                      sm_XX for machine code (SASS), compute_XX for PTX; "none" for a
                      CPU-only build
  op_loaded           yes, or no and why (op_unavailable_reason)
  auto_backend        what a TTEmbedding with lookup_backend="auto" uses here: "op" or
                      "reference" (the pure-TF chain)
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_KINDS = {1: "compute", 2: "sm"}  # PTX, ELF (SASS)


def fatbin_entries(data: bytes) -> List[Tuple[str, int]]:
    """(kind, arch) of every entry of a .nv_fatbin section's bytes, kind "sm" (SASS) or
    "compute" (PTX). The section holds fatbin containers (magic 0xBA55ED50, header size,
    body size) whose entries each start with kind, header size, payload size, and the
    sm version at byte 28."""
    entries, offset = [], 0
    while offset + 16 <= len(data):
        magic, _version, header_size, body_size = struct.unpack_from("<IHHQ", data, offset)
        if magic != _FATBIN_MAGIC:
            break
        pos, end = offset + header_size, offset + header_size + body_size
        while pos + 32 <= end:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", data, pos)
            (arch,) = struct.unpack_from("<I", data, pos + 28)
            entries.append((_FATBIN_KINDS.get(kind, f"kind{kind}"), arch))
            pos += entry_header + payload
        offset = end
    return entries


def cuda_archs(library_path: str) -> Tuple[Optional[List[str]], str]:
    """(sorted arch names like "sm_80", "compute_90"; or None, why they are unknown)."""
    objcopy = shutil.which("objcopy")
    if objcopy is None:
        return None, "objcopy is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "fatbin")
        proc = subprocess.run([objcopy, "-O", "binary", "--only-section=.nv_fatbin",
                               library_path, raw], capture_output=True, text=True)
        if proc.returncode != 0:
            return None, f"objcopy failed: {proc.stderr.strip()}"
        data = open(raw, "rb").read() if os.path.exists(raw) else b""
    return sorted({f"{kind}_{arch}" for kind, arch in fatbin_entries(data)}), ""


def collect(library=None) -> Dict[str, str]:
    """The report as an ordered {key: value} dict; `library` defaults to tt_keras's."""
    import tt_keras  # pylint: disable=g-import-not-at-top
    from tt_keras import lookup  # pylint: disable=g-import-not-at-top
    from tt_keras._keras import IS_KERAS_3, keras  # pylint: disable=g-import-not-at-top
    from tt_keras.ops import OpLibraryUnavailable, tt_ops_library  # pylint: disable=g-import-not-at-top
    from tt_keras.ops.loader import read_stamp  # pylint: disable=g-import-not-at-top

    library = library or tt_ops_library
    info = {
        "tt_keras": tt_keras.__version__,
        "tensorflow": tf.__version__,
        "keras": f"{keras.__version__} ({'Keras 3' if IS_KERAS_3 else 'legacy tf_keras'})",
        "op_library": library.path,
        "op_library_exists": "yes" if os.path.exists(library.path) else "no",
    }
    stamp_path = os.path.join(os.path.dirname(library.path), "_tt_ops.version")
    for key, value in read_stamp(stamp_path).items():
        info[f"stamp.{key}"] = value
    if os.path.exists(library.path):
        archs, why = cuda_archs(library.path)
        info["cuda_archs"] = ((" ".join(archs) or "none") if archs is not None
                              else f"unknown ({why})")
    try:
        library.ops
        info["op_loaded"] = "yes"
    except OpLibraryUnavailable as e:
        info["op_loaded"] = "no"
        info["op_unavailable_reason"] = str(e)
    if library is tt_ops_library:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the reason is printed above
            info["auto_backend"] = lookup.resolve_backend("auto")
    else:
        info["auto_backend"] = "op" if info["op_loaded"] == "yes" else "reference"
    return info


def format_report(info: Dict[str, str]) -> str:
    """`key: value` lines (values on one line)."""
    width = max(len(k) for k in info)
    return "\n".join(f"{k + ':':<{width + 1}} {' '.join(str(v).split())}" for k, v in info.items())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--json"]):
        print("usage: python -m tt_keras.info [--json]", file=sys.stderr)
        return 2
    info = collect()
    print(json.dumps(info, indent=1) if argv else format_report(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
