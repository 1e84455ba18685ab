"""Scraping the servers' Prometheus /metrics: the exposition parser against a real vLLM 0.32
page, the metrics kept (old names too), fleet totals, counter deltas, and servers without it."""

from __future__ import annotations

import http.server
import json
import math
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcinfer.bench.prometheus import (
    Scrape,
    counter_delta,
    fetch_metrics,
    kept_metrics,
    parse_exposition,
    scrape,
    server_metrics,
)
from hpcinfer.testing.stub_server import StubServer

VLLM_PAGE = Path(__file__).parent / "data" / "vllm_0.32_metrics.txt"


def test_a_real_vllm_page_parses_with_labels_histograms_and_every_kept_metric() -> None:
    samples = parse_exposition(VLLM_PAGE.read_text(encoding="utf-8"))
    by_name = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}
    assert by_name[("vllm:prompt_tokens_total", (("engine", "0"), ("model_name", "tiny")))] == 2581
    bucket = (
        "vllm:time_to_first_token_seconds_bucket",
        (("engine", "0"), ("le", "+Inf"), ("model_name", "tiny")),
    )
    assert by_name[bucket] == 43
    info = next(s for s in samples if s.name == "vllm:cache_config_info")
    assert info.labels["kv_cache_size_tokens"] == "3641216"  # a long label set
    assert not any(s.name.startswith("#") for s in samples)

    kept = kept_metrics(samples)
    assert kept == {
        "num_requests_running": 0.0,
        "num_requests_waiting": 0.0,
        "kv_cache_usage_perc": 0.0,
        "prompt_tokens_total": 2581.0,
        "generation_tokens_total": 1304.0,
        "request_success_total": 43.0,  # summed over finished_reason
        "num_preemptions_total": 0.0,
        "time_to_first_token_seconds_sum": pytest.approx(3.271329879760742),
        "time_to_first_token_seconds_count": 43.0,
        "inter_token_latency_seconds_sum": pytest.approx(26.42375749902567),
        "inter_token_latency_seconds_count": 1261.0,
        "e2e_request_latency_seconds_sum": pytest.approx(29.689663887023926),
        "e2e_request_latency_seconds_count": 43.0,
    }


def test_the_parser_reads_escapes_special_values_timestamps_and_skips_bad_lines() -> None:
    text = "\n".join(
        [
            "# a free comment",
            'm{path="C:\\\\x",quote="say \\"hi\\"",nl="a\\nb"} 1.5 1700000000000',
            "plain 3",
            "nan_metric NaN",
            "inf_metric +Inf",
            'exemplar_total{a="1"} 7 # {trace_id="abc"} 1.0',
            "broken{a=1} 2",
            "no_value",
            'bad_value{a="1"} twelve',
            "# EOF",
        ]
    )
    samples = {s.name: s for s in parse_exposition(text)}
    assert samples["m"].labels == {"path": "C:\\x", "quote": 'say "hi"', "nl": "a\nb"}
    assert samples["m"].value == 1.5
    assert samples["plain"].value == 3 and samples["plain"].labels == {}
    assert math.isnan(samples["nan_metric"].value)
    assert samples["inf_metric"].value == math.inf
    assert samples["exemplar_total"].value == 7 and samples["exemplar_total"].labels == {"a": "1"}
    assert set(samples) == {"m", "plain", "nan_metric", "inf_metric", "exemplar_total"}


def test_older_vllm_names_are_read_and_a_new_name_wins_over_an_old_one() -> None:
    old = kept_metrics(
        parse_exposition(
            'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
            'vllm:time_per_output_token_seconds_sum{model_name="m"} 2.0\n'
            'vllm:time_per_output_token_seconds_count{model_name="m"} 40\n'
        )
    )
    assert old == {
        "kv_cache_usage_perc": 0.25,
        "inter_token_latency_seconds_sum": 2.0,
        "inter_token_latency_seconds_count": 40.0,
    }
    both = kept_metrics(
        parse_exposition("vllm:kv_cache_usage_perc 0.5\nvllm:gpu_cache_usage_perc 0.25\n")
    )
    assert both == {"kv_cache_usage_perc": 0.5}


def test_engines_of_one_server_are_summed_but_cache_use_is_averaged() -> None:
    kept = kept_metrics(
        parse_exposition(
            'vllm:num_requests_waiting{engine="0"} 3\n'
            'vllm:num_requests_waiting{engine="1"} 4\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.2\n'
            'vllm:kv_cache_usage_perc{engine="1"} 0.4\n'
        )
    )
    assert kept["num_requests_waiting"] == 7
    assert kept["kv_cache_usage_perc"] == pytest.approx(0.3)


def test_fleet_totals_deltas_and_server_side_means() -> None:
    before = Scrape(
        {
            "http://a": {"prompt_tokens_total": 100.0, "num_requests_waiting": 5.0,
                         "kv_cache_usage_perc": 0.2, "time_to_first_token_seconds_sum": 1.0,
                         "time_to_first_token_seconds_count": 10.0},
            "http://b": {"prompt_tokens_total": 50.0, "num_requests_waiting": 1.0,
                         "kv_cache_usage_perc": 0.4, "time_to_first_token_seconds_sum": 0.0,
                         "time_to_first_token_seconds_count": 0.0},
            "http://c": None,
        }
    )  # fmt: skip
    after = Scrape(
        {
            "http://a": {"prompt_tokens_total": 300.0, "num_requests_waiting": 0.0,
                         "kv_cache_usage_perc": 0.0, "time_to_first_token_seconds_sum": 3.0,
                         "time_to_first_token_seconds_count": 20.0},
            "http://b": {"prompt_tokens_total": 20.0, "num_requests_waiting": 0.0,
                         "kv_cache_usage_perc": 0.0, "time_to_first_token_seconds_sum": 1.0,
                         "time_to_first_token_seconds_count": 10.0},
            "http://c": None,
        }
    )  # fmt: skip
    assert before.total()["prompt_tokens_total"] == 150
    assert before.total()["num_requests_waiting"] == 6
    assert before.total()["kv_cache_usage_perc"] == pytest.approx(0.3)

    entry = server_metrics(before, after)
    assert entry is not None
    assert set(entry) == {"before", "after", "delta"}
    assert entry["before"]["endpoints"]["http://c"] is None
    per = entry["delta"]["endpoints"]
    assert per["http://a"]["prompt_tokens_total"] == 200
    assert per["http://b"]["prompt_tokens_total"] == 20  # reset (restart): counted from 0
    assert "num_requests_waiting" not in per["http://a"]  # gauges have no delta
    assert per["http://a"]["server_mean_ttft_ms"] == pytest.approx(200.0)  # 2 s / 10
    assert per["http://c"] is None
    total = entry["delta"]["total"]
    assert total["time_to_first_token_seconds_count"] == 20
    assert total["server_mean_ttft_ms"] == pytest.approx(150.0)  # 3 s / 20
    json.dumps(entry, allow_nan=False)  # fits the result file
    assert counter_delta(None, {"prompt_tokens_total": 1.0}) is None


def test_no_server_with_metrics_gives_none() -> None:
    assert server_metrics(Scrape({"http://a": None}), Scrape({"http://a": None})) is None
    assert scrape([]).per_endpoint == {}


class _NoMetrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server_without_metrics() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NoMetrics)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_scraping_the_stub_a_404_and_a_closed_port(server_without_metrics: str) -> None:
    with StubServer(model="tiny") as stub:
        body = json.dumps({"model": "tiny", "prompt": "a b c", "max_tokens": 5}).encode()
        request = urllib.request.Request(
            stub.url + "/v1/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            response.read()
        closed = "http://127.0.0.1:9"  # discard port: nothing listens
        result = scrape([stub.url, server_without_metrics, closed], timeout_s=1.0)
        assert fetch_metrics(closed, 0.5) is None
    stub_metrics = result.per_endpoint[stub.url]
    assert stub_metrics is not None
    assert stub_metrics["generation_tokens_total"] == 5
    assert stub_metrics["prompt_tokens_total"] == 3
    assert result.per_endpoint[server_without_metrics] is None
    assert result.per_endpoint[closed] is None
    assert result.total()["generation_tokens_total"] == 5
