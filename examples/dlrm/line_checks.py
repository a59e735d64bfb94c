"""Checking Criteo train.txt lines as they stream: a bad line is an error naming its file and
its line number, or, with skip_bad_lines, skipped and counted. Never a silent wrong value.

A good line is 40 tab-separated fields: a label "0" or "1", 13 integers (optionally
negative, at most 18 digits, or empty) and 26 categorical ids of at most 8 hex digits (or
empty). One RE2 match of the whole line (`LINE_PATTERN`) decides, in the tf.data pipeline;
only for bad lines is the reason worked out (`bad_line_reasons`: wrong field count, a label
other than 0/1, a non-integer count, a non-hex or too long id, naming the feature).

Lines are numbered in their own file, from 1, before anything is filtered or batched
(`numbered_lines`), so the number is the line an editor shows.
"""

import sys
from typing import Sequence

import tensorflow as tf

NUM_INT = 13
NUM_CAT = 26
NUM_FIELDS = 1 + NUM_INT + NUM_CAT
_INT = "(-?[0-9]{1,18})?"
_HEX = "[0-9a-fA-F]{0,8}"
LINE_PATTERN = f"[01](\t{_INT}){{{NUM_INT}}}(\t{_HEX}){{{NUM_CAT}}}"
FIELD_NAMES = ("label",) + tuple(f"I{i}" for i in range(1, NUM_INT + 1)) + tuple(
    f"C{i}" for i in range(1, NUM_CAT + 1))
MAX_REPORTED = 10  # skipped lines printed one by one; the rest are only counted
CHUNK = 1024  # lines checked at once when bad ones are skipped


def numbered_lines(paths: Sequence[str]) -> tf.data.Dataset:
    """(path, 1-based line number in that file, line) for the lines of `paths`, in order."""
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    return files.flat_map(lambda path: tf.data.TextLineDataset(path).enumerate(start=1).map(
        lambda number, line: (path, number, line)))


def is_good_line(lines):
    """bool, elementwise: the line is a well-formed Criteo line."""
    return tf.strings.regex_full_match(lines, LINE_PATTERN)


def _first_false(ok):
    """Index of the first False along the last axis (the last index if there is none)."""
    return tf.argmax(tf.cast(tf.logical_not(ok), tf.int32), axis=-1, output_type=tf.int32)


def bad_line_reasons(paths, numbers, lines):
    """'<path> line <n>: <what is wrong>' for each of a batch of lines (meant for bad ones).
    Values are quoted with backticks: an Assert's message escapes quotes."""
    fields = tf.strings.split(lines, "\t")
    count = fields.row_lengths()
    padded = fields.to_tensor(default_value="", shape=[None, NUM_FIELDS])
    label = padded[:, 0]
    ints, hexes = padded[:, 1:1 + NUM_INT], padded[:, 1 + NUM_INT:]
    ints_ok = tf.strings.regex_full_match(ints, _INT)
    hexes_ok = tf.strings.regex_full_match(hexes, _HEX)
    bad_int, bad_hex = _first_false(ints_ok), _first_false(hexes_ok)
    names = tf.constant(FIELD_NAMES)
    int_name = tf.gather(names, 1 + bad_int)
    hex_name = tf.gather(names, 1 + NUM_INT + bad_hex)
    int_value = tf.gather(ints, bad_int, batch_dims=1)
    hex_value = tf.gather(hexes, bad_hex, batch_dims=1)
    reason = tf.where(
        tf.not_equal(count, NUM_FIELDS),
        tf.strings.join([f"expected {NUM_FIELDS} tab-separated fields, got ",
                         tf.strings.as_string(count)]),
        tf.where(
            tf.logical_not(tf.strings.regex_full_match(label, "[01]")),
            tf.strings.join(["the label must be 0 or 1, got `", label, "`"]),
            tf.where(
                tf.logical_not(tf.reduce_all(ints_ok, axis=-1)),
                tf.strings.join([int_name, " must be an integer (at most 18 digits) or "
                                 "empty, got `", int_value, "`"]),
                tf.strings.join([hex_name, " must be an id of at most 8 hex digits or "
                                 "empty, got `", hex_value, "`"]))))
    return tf.strings.join([paths, " line ", tf.strings.as_string(numbers), ": ", reason])


def assert_good_lines(paths, numbers, lines):
    """`lines` (a batch), after an assertion that each is good; the error names the first
    bad one's file and line."""
    ok = is_good_line(lines)

    def fail():
        first = _first_false(ok)[tf.newaxis]
        reason = bad_line_reasons(tf.gather(paths, first), tf.gather(numbers, first),
                                  tf.gather(lines, first))[0]
        message = tf.strings.join([reason, " (--skip_bad_lines skips and counts such lines)"])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.identity(lines)

    return tf.cond(tf.reduce_all(ok), lambda: lines, fail)


class BadLineCounter:
    """Counts (and prints the first MAX_REPORTED of) the lines `drop_bad` drops."""

    def __init__(self):
        self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_lines")

    @property
    def count(self) -> int:
        return int(self.variable.numpy())

    def drop_bad(self, paths, numbers, lines):
        """A chunk of lines without its bad ones, which are counted (vectorized: tf.data
        filters on whole chunks, then unbatches)."""
        ok = is_good_line(lines)
        bad = tf.logical_not(ok)
        num_bad = tf.reduce_sum(tf.cast(bad, tf.int64))

        def count_and_report():
            before = self.variable.assign_add(num_bad) - num_bad
            report = tf.maximum(tf.minimum(MAX_REPORTED - before, num_bad), 0)
            first = tf.where(bad)[:report, 0]
            reasons = bad_line_reasons(tf.gather(paths, first), tf.gather(numbers, first),
                                       tf.gather(lines, first))
            printed = tf.cond(report > 0,
                              lambda: _print("skipping bad lines:", reasons, summarize=-1),
                              lambda: tf.constant(False))
            with tf.control_dependencies([printed]):
                return tf.identity(ok)

        ok = tf.cond(num_bad > 0, count_and_report, lambda: ok)
        return tf.boolean_mask(paths, ok), tf.boolean_mask(numbers, ok), tf.boolean_mask(
            lines, ok)


def _print(*args, **kwargs):
    with tf.control_dependencies([tf.print(*args, output_stream=sys.stderr, **kwargs)]):
        return tf.constant(True)
