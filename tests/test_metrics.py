# -*- test-case-name: tests.test_metrics -*-
"""
Tests for L{twisted_kv.web.metrics}: metric families read at scrape time, hot
path counters and histograms, and a node's registry, checked through
C{prometheus_client}'s own parser.
"""

from __future__ import annotations

import platform
import sys

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from twisted_kv.web.metrics import (
    LATENCY_BUCKETS,
    Counts,
    Histogram,
    counter,
    gauge,
    node_registry,
    render,
)


def parse(text: str) -> dict[str, Metric]:
    """
    The metric families of a text exposition, by name (a counter's without
    its C{_total}).
    """
    return {family.name: family for family in text_string_to_metric_families(text)}


def scrape(*collectors: object) -> dict[str, Metric]:
    """
    The families of a node registry of C{collectors}, rendered and parsed
    back.
    """
    return parse(render(node_registry(*collectors)).decode("utf-8"))


def values(family: Metric) -> dict[tuple[str, frozenset], float]:
    """
    The samples of C{family} as C{(sample name, labels) -> value}.
    """
    return {(s.name, frozenset(s.labels.items())): s.value for s in family.samples}


class ReadingTests(SynchronousTestCase):
    """
    L{counter} and L{gauge} read their values from a subject when collected.
    """

    def test_per(self) -> None:
        """
        L{Reading.per} gives one sample per subject, labelled with its
        name; booleans are 0 and 1.
        """
        alive = gauge("kv_alive", "Whether alive.", lambda n: n["alive"])
        family = alive.per("node", [("n1", {"alive": True}), ("n2", {"alive": False})])
        self.assertEqual(family.type, "gauge")
        self.assertEqual(
            values(family),
            {("kv_alive", frozenset({("node", "n1")})): 1.0,
             ("kv_alive", frozenset({("node", "n2")})): 0.0},
        )

    def test_of(self) -> None:
        """
        L{Reading.of} gives one unlabelled sample; a counter's sample is
        named with C{_total}.
        """
        family = counter("kv_ops_total", "Operations.", len).of("abc")
        self.assertEqual((family.type, family.name), ("counter", "kv_ops"))
        self.assertEqual(values(family), {("kv_ops_total", frozenset()): 3.0})

    def test_counter_name(self) -> None:
        """
        A counter whose name does not end in C{_total} is refused.
        """
        self.assertRaises(ValueError, counter, "kv_ops", "Operations.", len)
        self.assertRaises(ValueError, Counts, "kv_ops", "Operations.", ["kind"])


class CountsTests(SynchronousTestCase):
    """
    L{Counts} counts events by label values.
    """

    def test_counts(self) -> None:
        """
        Each combination of label values is a sample of its own; the
        values are turned into strings.
        """
        counts = Counts("kv_requests_total", "Requests.", ["method", "code"])
        for labels in [("GET", 200), ("GET", 200), ("PUT", 201)]:
            counts.inc(labels)
        family = scrape(counts)["kv_requests"]
        self.assertEqual(family.type, "counter")
        self.assertEqual(
            values(family),
            {("kv_requests_total", frozenset({("method", "GET"), ("code", "200")})): 2.0,
             ("kv_requests_total", frozenset({("method", "PUT"), ("code", "201")})): 1.0},
        )


class HistogramTests(SynchronousTestCase):
    """
    L{Histogram} puts observations in cumulative buckets, with their count
    and sum.
    """

    def test_buckets(self) -> None:
        """
        An observation counts in every bucket whose upper bound it does not
        exceed, a bound included; one above every bound only in C{+Inf}.
        """
        histogram = Histogram("kv_seconds", "Latency.", ["op"], buckets=[0.1, 1.0])
        for value in [0.05, 0.1, 0.5, 7.0]:
            histogram.observe(("get",), value)
        family = scrape(histogram)["kv_seconds"]
        self.assertEqual(family.type, "histogram")
        op = ("op", "get")
        self.assertEqual(
            values(family),
            {("kv_seconds_bucket", frozenset({op, ("le", "0.1")})): 2.0,
             ("kv_seconds_bucket", frozenset({op, ("le", "1.0")})): 3.0,
             ("kv_seconds_bucket", frozenset({op, ("le", "+Inf")})): 4.0,
             ("kv_seconds_count", frozenset({op})): 4.0,
             ("kv_seconds_sum", frozenset({op})): 7.65},
        )

    def test_series(self) -> None:
        """
        Each combination of label values has buckets of its own, and the
        default buckets go from half a millisecond to ten seconds.
        """
        histogram = Histogram("kv_seconds", "Latency.", ["op"])
        histogram.observe(("get",), 0.0002)
        histogram.observe(("put",), 3.0)
        samples = values(scrape(histogram)["kv_seconds"])
        self.assertEqual(
            sorted(float(dict(labels)["le"]) for name, labels in samples
                   if name == "kv_seconds_bucket" and ("op", "get") in labels),
            [*LATENCY_BUCKETS, float("inf")],
        )
        self.assertEqual((LATENCY_BUCKETS[0], LATENCY_BUCKETS[-1]), (0.0005, 10.0))
        self.assertEqual(
            samples["kv_seconds_bucket", frozenset({("op", "get"), ("le", "0.0005")})], 1.0
        )
        self.assertEqual(
            samples["kv_seconds_bucket", frozenset({("op", "put"), ("le", "2.5")})], 0.0
        )
        self.assertEqual(
            samples["kv_seconds_bucket", frozenset({("op", "put"), ("le", "5.0")})], 1.0
        )

    def test_bad_buckets(self) -> None:
        """
        Bucket bounds must be given, increasing.
        """
        for buckets in [[], [1.0, 0.5], [1.0, 1.0]]:
            self.assertRaises(ValueError, Histogram, "kv_seconds", "Latency.", ["op"], buckets)


class RegistryTests(SynchronousTestCase):
    """
    L{node_registry} holds one node's metrics and the process's.
    """

    def test_read_at_scrape(self) -> None:
        """
        A function given as a collector is called at every scrape.
        """
        state = {"keys": 1}
        keys = gauge("kv_keys", "Keys.", lambda s: s["keys"])
        registry = node_registry(lambda: [keys.of(state)])
        scraped = [render(registry)]
        state["keys"] = 5
        scraped.append(render(registry))
        self.assertEqual(
            [
                values(f)[("kv_keys", frozenset())]
                for text in scraped
                for f in text_string_to_metric_families(text.decode("utf-8"))
                if f.name == "kv_keys"
            ],
            [1.0, 5.0],
        )

    def test_process(self) -> None:
        """
        Every registry has the process, platform and garbage collector
        metrics, and several registries live in one process without
        colliding (as the in-memory cluster's nodes do).
        """
        families = [scrape(), scrape()]
        for family in families:
            self.assertEqual(family["python_info"].type, "gauge")
            if platform.python_implementation() == "CPython":
                self.assertEqual(family["python_gc_collections"].type, "counter")
        if not sys.platform.startswith("linux"):
            raise SkipTest("process metrics are read from /proc")
        for family in families:
            self.assertEqual(family["process_cpu_seconds"].type, "counter")
            for name in ["process_resident_memory_bytes", "process_start_time_seconds",
                         "process_open_fds"]:
                self.assertEqual(family[name].type, "gauge", name)
                self.assertGreater(family[name].samples[0].value, 0, name)
