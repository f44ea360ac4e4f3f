# -*- test-case-name: tests.test_metrics -*-
"""
Tests for L{twisted_kv.metrics}: the Prometheus text format.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_kv.metrics import Metric, render, sample


class SampleTests(SynchronousTestCase):
    """
    L{sample} builds one sample.
    """

    def test_labels_sorted(self) -> None:
        """
        Labels are kept as sorted (name, value) pairs, whatever order they
        were given in.
        """
        self.assertEqual(sample(3, node="n1", kind="put"), ((("kind", "put"), ("node", "n1")), 3))
        self.assertEqual(sample(1.5), ((), 1.5))


class RenderTests(SynchronousTestCase):
    """
    L{render} writes the text exposition format, version 0.0.4.
    """

    def test_family(self) -> None:
        """
        Each family is a HELP line, a TYPE line, then one line per sample;
        the text ends with a newline.
        """
        text = render(
            [
                Metric(
                    "kv_requests_total",
                    "counter",
                    "Requests executed.",
                    [sample(3, node="n1"), sample(4, node="n2")],
                )
            ]
        )
        self.assertEqual(
            text,
            "# HELP kv_requests_total Requests executed.\n"
            "# TYPE kv_requests_total counter\n"
            'kv_requests_total{node="n1"} 3\n'
            'kv_requests_total{node="n2"} 4\n',
        )

    def test_no_labels(self) -> None:
        """
        A sample without labels has no braces.
        """
        text = render([Metric("kv_keys", "gauge", "Keys held.", [sample(12)])])
        self.assertEqual(text.splitlines()[-1], "kv_keys 12")

    def test_several_labels(self) -> None:
        """
        Several labels are comma-separated, in name order.
        """
        text = render([Metric("m", "gauge", "h", [sample(1, zone="z", app="a")])])
        self.assertEqual(text.splitlines()[-1], 'm{app="a",zone="z"} 1')

    def test_values(self) -> None:
        """
        Integers render as integers, floats in full precision (an integral
        float keeps its C{.0}).
        """
        text = render(
            [Metric("m", "gauge", "h", [sample(7, a="i"), sample(0.1, a="f"), sample(2.0, a="g")])]
        )
        self.assertEqual(
            text.splitlines()[2:], ['m{a="i"} 7', 'm{a="f"} 0.1', 'm{a="g"} 2.0']
        )

    def test_label_escaping(self) -> None:
        """
        Backslashes, double quotes and newlines in label values are escaped
        as C{\\\\}, C{\\"} and C{\\n}.
        """
        text = render([Metric("m", "gauge", "h", [sample(1, path='a\\b"c\nd')])])
        self.assertEqual(text.splitlines()[-1], 'm{path="a\\\\b\\"c\\nd"} 1')
        self.assertEqual(len(text.splitlines()), 3)

    def test_several_families(self) -> None:
        """
        Families follow each other in the order given; one without samples
        still has its HELP and TYPE lines.
        """
        text = render(
            [
                Metric("a_total", "counter", "A.", []),
                Metric("b", "gauge", "B.", [sample(1)]),
            ]
        )
        self.assertEqual(
            text.splitlines(),
            ["# HELP a_total A.", "# TYPE a_total counter", "# HELP b B.", "# TYPE b gauge", "b 1"],
        )

    def test_empty(self) -> None:
        """
        No metrics render as a lone newline.
        """
        self.assertEqual(render([]), "\n")

    def test_help_escaping(self) -> None:
        """
        Backslashes and newlines in HELP text are escaped (format 0.0.4),
        so a multi-line help cannot break the exposition.
        """
        text = render([Metric("m", "gauge", "first\nsecond \\ third", [sample(1)])])
        self.assertEqual(text.splitlines()[0], "# HELP m first\\nsecond \\\\ third")
        self.assertEqual(len(text.splitlines()), 3)

