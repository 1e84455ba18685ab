"""`hpcinfer bench serve` without a real model: flags and their errors, the sweep, targets from
a registry, the model and tokenizer found from /v1/models, and serve.json/serve.csv as written
against the in-process stub server (fast: a few milliseconds per request)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hpcinfer.bench.serve_bench import (
    BenchError,
    LoadPoint,
    ServeBenchOptions,
    ServedModel,
    csv_columns,
    resolve_endpoints,
    run_serve_bench,
    served_model,
    sweep_points,
    tokenizer_source,
)
from hpcinfer.cli import main as cli_main
from hpcinfer.cli.bench_serve_cmd import build_options
from hpcinfer.core.endpoints_registry import Endpoint, RegistryError, write_registry
from hpcinfer.errors import InputError, SpecError
from hpcinfer.testing.stub_server import StubServer

runner = CliRunner()

RUN_KEYS = {"label", "load", "metrics", "server_metrics", "errors"}
LOAD_KEYS = {"mode", "rate", "burstiness", "max_concurrency", "requests", "description"}


def flags(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """build_options' arguments as the CLI's defaults give them, with `changes`."""
    values: dict[str, Any] = {
        "url": ["http://127.0.0.1:8000"],
        "endpoints": None,
        "model": None,
        "api": "completions",
        "dataset": "random",
        "input_len": 16,
        "output_len": 8,
        "num_prompts": 10,
        "range_ratio": 0.0,
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": None,
        "dataset_seed": 0,
        "percentiles": "50,90,99",
        "slo": None,
        "tokenizer": None,
        "vocab_size": None,
        "warmup": 0,
        "timeout": 600.0,
        "temperature": 0.0,
        "ignore_eos": True,
        "api_key_env": None,
        "out": Path("bench-out"),
        "cwd": tmp_path,
    }
    values.update(changes)
    return values


# -- flags ------------------------------------------------------------------------------------


def test_flags_become_options_with_sweeps_and_paths_from_the_working_directory(
    tmp_path: Path,
) -> None:
    options = build_options(
        **flags(
            tmp_path,
            request_rate="2, 8,inf",
            max_concurrency="4,16",
            percentiles="p50,99.9",
            slo="ttft=2000,tpot:100ms",
            tokenizer=Path("tok"),
            endpoints=Path("endpoints.json"),
        )
    )
    assert options.rates == (2.0, 8.0, math.inf)
    assert options.concurrencies == (4, 16)
    assert options.percentiles == (50.0, 99.9)
    assert options.slo == {"ttft_ms": 2000.0, "tpot_ms": 100.0}
    assert options.tokenizer == tmp_path / "tok"
    assert options.registry == tmp_path / "endpoints.json"
    assert options.out_dir == tmp_path / "bench-out"
    config = options.config()
    assert config["request_rates"] == [2.0, 8.0, None]  # inf: all at once, JSON-safe
    json.dumps(config, allow_nan=False)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"request_rate": "0"}, r"--request-rate: .*above 0"),
        ({"request_rate": "fast"}, r"--request-rate: .*not a number"),
        ({"max_concurrency": "0"}, r"--max-concurrency: .*1 or more"),
        ({"max_concurrency": "2.5"}, r"--max-concurrency: .*whole number"),
        ({"percentiles": "101"}, r"--percentiles: .*outside 0\.\.100"),
        ({"slo": "latency=5"}, r"--slo: .*unknown name"),
        ({"slo": "ttft=-1"}, r"--slo: .*negative"),
        ({"burstiness": 0.0}, r"--burstiness 0: .*above 0"),
        ({"range_ratio": 1.0}, r"--range-ratio 1: "),
        ({"timeout": 0.0}, r"--timeout 0: "),
        ({"api": "embeddings"}, r"--api 'embeddings': choose completions or chat"),
        ({"api": "chat"}, r"--api chat needs text prompts.*name input files"),
        ({"dataset": "missing.jsonl"}, r"--dataset 'missing.jsonl': no such file"),
        ({"tokenizer": Path("t"), "vocab_size": 100}, r"--tokenizer and --vocab-size"),
        ({"url": None}, r"needs servers: --url .* or --endpoints"),
        ({"api_key_env": "HPCINFER_TEST_UNSET_KEY"}, r"--api-key-env .*is not set"),
    ],
)
def test_bad_flags_name_the_flag_and_the_fix(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        build_options(**flags(tmp_path, **changes))


def test_bad_flags_exit_2_before_anything_is_sent(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hpcinfer", "bench", "serve", "--url", "http://127.0.0.1:9",
         "--request-rate", "1,x"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--request-rate" in result.stderr
    assert not (tmp_path / "bench-out").exists()


def test_help_carries_a_runnable_example_and_the_exit_codes() -> None:
    result = runner.invoke(cli_main.app, ["bench", "serve", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "hpcinfer bench serve --url http://127.0.0.1:8000" in text
    assert "python -m hpcinfer.testing.stub_server" in text
    for flag in ("--request-rate", "--max-concurrency", "--burstiness", "--slo", "--endpoints"):
        assert flag in text
    assert "Exit codes: 0" in text


# -- the sweep --------------------------------------------------------------------------------


def test_a_sweep_is_rates_times_concurrencies_rates_outer_in_the_given_order() -> None:
    points = sweep_points([4.0, 1.0], [8, 2])
    assert [(p.rate, p.max_concurrency) for p in points] == [(4, 8), (4, 2), (1, 8), (1, 2)]
    assert [p.label for p in points] == [
        "rate=4,concurrency=8",
        "rate=4,concurrency=2",
        "rate=1,concurrency=8",
        "rate=1,concurrency=2",
    ]
    assert sweep_points([], []) == [LoadPoint(math.inf, None)]
    assert [p.mode for p in sweep_points([math.inf, 2.5], [None, 3])] == [
        "all-at-once",
        "concurrency",
        "rate",
        "rate",
    ]
    assert LoadPoint(2.5).label == "rate=2.5"
    assert LoadPoint().label == "all-at-once"


def test_a_point_schedules_by_the_arrivals_module() -> None:
    closed = LoadPoint(math.inf, 4).schedule(10, burstiness=1.0, seed=0)
    assert closed.closed_loop and len(closed) == 10
    open_loop = LoadPoint(5.0, None).schedule(10, burstiness=0.5, seed=3)
    assert open_loop.offsets_s[-1] == pytest.approx(10 / 5.0)  # vLLM's rescaling
    assert open_loop == LoadPoint(5.0, None).schedule(10, burstiness=0.5, seed=3)  # seeded


# -- targets, model, tokenizer ----------------------------------------------------------------


def test_registry_targets_are_its_ready_servers_after_the_urls(tmp_path: Path) -> None:
    registry = tmp_path / "endpoints.json"
    write_registry(
        registry,
        [
            Endpoint("http://a:1", "m", state="ready"),
            Endpoint("http://b:1", "m", state="starting"),
            Endpoint("http://c:1", "m", state="dead"),
            Endpoint("http://x:2", "m", state="ready"),
        ],
    )
    assert resolve_endpoints(["http://x:2/"], registry, tmp_path) == ["http://x:2", "http://a:1"]
    write_registry(registry, [Endpoint("http://c:1", "m", state="failed")])
    with pytest.raises(RegistryError, match=r"has no ready server.*--wait"):
        resolve_endpoints([], registry, tmp_path)
    with pytest.raises(RegistryError, match="does not exist"):
        resolve_endpoints([], tmp_path / "none.json", tmp_path)


def test_the_model_and_its_directory_come_from_v1_models() -> None:
    with StubServer(model="served-name") as stub:
        assert served_model(stub.url, None, None) == ServedModel("served-name", "served-name")
        assert served_model(stub.url, None, "other").name == "other"


def test_the_random_dataset_tokenizer_is_the_flag_the_model_directory_or_a_vocab_size(
    tmp_path: Path,
) -> None:
    options = ServeBenchOptions(out_dir=tmp_path)
    assert tokenizer_source(options, ServedModel("m", str(tmp_path))) == tmp_path
    with_size = ServeBenchOptions(out_dir=tmp_path, vocab_size=500)
    assert tokenizer_source(with_size, ServedModel("m", "/not/here")) == 500
    with pytest.raises(SpecError, match=r"'/not/here' is not on this machine.*--tokenizer DIR"):
        tokenizer_source(options, ServedModel("m", "/not/here"))
    with pytest.raises(SpecError, match=r"does not say where.*--vocab-size N"):
        tokenizer_source(options, ServedModel("m", None))
    bad = ServeBenchOptions(out_dir=tmp_path, tokenizer=tmp_path / "nope")
    with pytest.raises(SpecError, match=r"--tokenizer .*not a directory"):
        tokenizer_source(bad, ServedModel("m", None))


# -- a whole run against the stub -------------------------------------------------------------


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer(ttft_s=0.002, itl_s=0.001) as server:
        yield server


class Recorder:
    """A reporter that also checks serve.json is complete after every point."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.notes: list[str] = []
        self.runs_on_disk: list[int] = []
        self.progress_seen: list[tuple[int, int]] = []

    def note(self, message: str) -> None:
        self.notes.append(message)

    def point_started(self, index: int, total: int, point: LoadPoint, requests: int) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        self.progress_seen.append((done, total))

    def point_finished(self, run: Mapping[str, Any]) -> None:
        document = json.loads((self.out_dir / "serve.json").read_text())
        self.runs_on_disk.append(len(document["runs"]))


def test_a_sweep_writes_serve_json_and_csv_after_every_point(
    stub: StubServer, tmp_path: Path
) -> None:
    options = ServeBenchOptions(
        out_dir=tmp_path / "out",
        urls=(stub.url,),
        vocab_size=50,
        input_len=6,
        output_len=4,
        num_prompts=12,
        rates=(200.0, math.inf),
        concurrencies=(None, 3),
        percentiles=(50.0, 99.0),
        slo={"ttft_ms": 5000.0},
        warmup=2,
    )
    recorder = Recorder(options.out_dir)
    outcome = run_serve_bench(options, tmp_path, recorder)
    assert outcome.outcome == "ok" and outcome.message is None
    assert recorder.runs_on_disk == [1, 2, 3, 4]
    assert recorder.progress_seen[-1] == (12, 12)
    assert any("warm-up: 2 requests" in note for note in recorder.notes)

    document = json.loads((options.out_dir / "serve.json").read_text())
    assert document["kind"] == "serve" and document == outcome.document
    assert document["config"]["endpoints"] == [stub.url]
    assert document["config"]["model"] == "tiny"
    runs = document["runs"]
    assert [r["label"] for r in runs] == [
        "rate=200",
        "rate=200,concurrency=3",
        "all-at-once",
        "concurrency=3",
    ]
    for run in runs:
        assert set(run) == RUN_KEYS
        assert set(run["load"]) == LOAD_KEYS
        assert run["load"]["requests"] == 12
        metrics = run["metrics"]
        assert (metrics["completed"], metrics["failed"]) == (12, 0)
        assert metrics["total_input_tokens"] == 12 * 6  # exact lengths
        assert metrics["total_output_tokens"] == 12 * 4
        assert metrics["latency_origin"] == "scheduled"
        assert metrics["request_goodput"] == pytest.approx(metrics["request_throughput"])
        assert run["errors"] == {}
        delta = run["server_metrics"]["delta"]["total"]
        assert delta["generation_tokens_total"] == 12 * 4  # the stub's own count
    assert [r["load"]["mode"] for r in runs] == ["rate", "rate", "all-at-once", "concurrency"]
    assert runs[0]["load"]["rate"] == 200.0 and runs[2]["load"]["rate"] is None

    with (options.out_dir / "serve.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        assert reader.fieldnames == csv_columns((50.0, 99.0))
    assert [row["label"] for row in rows] == [r["label"] for r in runs]
    assert rows[0]["rate"] == "200.0" and rows[2]["rate"] == ""
    assert rows[3]["max_concurrency"] == "3" and rows[0]["max_concurrency"] == ""
    assert all(row["completed"] == "12" for row in rows)
    assert float(rows[1]["p99_ttft_ms"]) == pytest.approx(runs[1]["metrics"]["p99_ttft_ms"])
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert {f"mean_{name}_ms", f"p50_{name}_ms", f"p99_{name}_ms"} <= set(rows[0])
        assert f"median_{name}_ms" not in rows[0]  # the same figure as p50, shown once


def test_failures_are_counted_exit_3_and_nothing_ok_is_exit_1(tmp_path: Path) -> None:
    with StubServer(faults=["http500@every=4"]) as stub:
        options = ServeBenchOptions(
            out_dir=tmp_path / "some", urls=(stub.url,), vocab_size=50, input_len=4,
            output_len=2, num_prompts=12, concurrencies=(1,),
        )  # fmt: skip
        outcome = run_serve_bench(options, tmp_path)
    assert outcome.outcome == "some_failed"
    run = outcome.document["runs"][0]
    assert (run["metrics"]["completed"], run["metrics"]["failed"]) == (9, 3)
    assert sum(run["errors"].values()) == 3
    assert "HTTP 500" in next(iter(run["errors"]))

    with StubServer(faults=["http500"]) as stub:
        options = ServeBenchOptions(
            out_dir=tmp_path / "none", urls=(stub.url,), vocab_size=50, input_len=4,
            output_len=2, num_prompts=5,
        )  # fmt: skip
        outcome = run_serve_bench(options, tmp_path)
    assert outcome.outcome == "none_succeeded"
    assert outcome.message is not None
    assert "no request succeeded (5 failed: 5 x HTTP 500" in outcome.message
    assert (tmp_path / "none" / "serve.json").exists()  # the failure is on record


def test_an_unreachable_url_is_named_and_a_dead_registry_entry_left_out(tmp_path: Path) -> None:
    closed = "http://127.0.0.1:9"
    options = ServeBenchOptions(out_dir=tmp_path / "o", urls=(closed,), vocab_size=50)
    with pytest.raises(BenchError, match=r"cannot reach http://127\.0\.0\.1:9 \(/health"):
        run_serve_bench(options, tmp_path)
    assert not (tmp_path / "o").exists()

    with StubServer() as stub:
        registry = tmp_path / "endpoints.json"
        write_registry(
            registry,
            [Endpoint(stub.url, "tiny", state="ready"), Endpoint(closed, "tiny", state="ready")],
        )
        recorder = Recorder(tmp_path / "o")
        options = ServeBenchOptions(
            out_dir=tmp_path / "o", registry=registry, vocab_size=50, input_len=4,
            output_len=2, num_prompts=4,
        )  # fmt: skip
        outcome = run_serve_bench(options, tmp_path, recorder)
    assert outcome.outcome == "ok"
    assert outcome.document["config"]["endpoints"] == [stub.url]
    assert any(note.startswith(f"left out {closed}") for note in recorder.notes)


def test_the_api_key_is_sent_and_never_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sk-hpcinfer-test-secret-123"
    monkeypatch.setenv("HPCINFER_BENCH_KEY", key)
    with StubServer(api_key=key) as stub:
        options = build_options(
            **flags(tmp_path, url=[stub.url], vocab_size=50, num_prompts=3,
                    api_key_env="HPCINFER_BENCH_KEY")
        )  # fmt: skip
        assert key not in repr(options)
        outcome = run_serve_bench(options, tmp_path)
        assert outcome.outcome == "ok"
        wrong = ServeBenchOptions(out_dir=tmp_path / "w", urls=(stub.url,), vocab_size=50)
        with pytest.raises(BenchError, match=r"HTTP 401.*--api-key-env"):
            run_serve_bench(wrong, tmp_path)
    for path in (tmp_path / "bench-out").iterdir():
        assert key not in path.read_text()
    assert outcome.document["config"]["api_key_env"] == "HPCINFER_BENCH_KEY"


def test_bad_jsonl_lines_are_reported_and_counted_not_fatal_and_chat_goes_to_chat(
    stub: StubServer, tmp_path: Path
) -> None:
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        '{"prompt": "one two three"}\n'
        "{broken\n"
        '{"messages": [{"role": "user", "content": "hi"}]}\n'
        '{"prompt": "four five", "max_tokens": 3}\n',
        encoding="utf-8",
    )
    recorder = Recorder(tmp_path / "o")
    options = ServeBenchOptions(
        out_dir=tmp_path / "o", urls=(stub.url,), dataset=str(data), output_len=5
    )
    before = stub.stats()["by_api"]
    outcome = run_serve_bench(options, tmp_path, recorder)
    assert outcome.outcome == "ok"
    after = stub.stats()["by_api"]
    assert {api: after[api] - before[api] for api in after} == {"completions": 2, "chat": 1}
    errors = outcome.document["config"]["dataset_errors"]
    assert errors["count"] == 1
    assert errors["first"][0].startswith("prompts.jsonl:2: ")
    assert any(note.startswith("skipped prompts.jsonl:2") for note in recorder.notes)
    metrics = outcome.document["runs"][0]["metrics"]
    assert metrics["completed"] == 3
    assert metrics["total_output_tokens"] == 5 + 5 + 3  # a line's own max_tokens wins

    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text("{broken\n", encoding="utf-8")
    bad_options = ServeBenchOptions(out_dir=tmp_path / "b", urls=(stub.url,), dataset=str(only_bad))
    with pytest.raises(InputError, match=r"bad\.jsonl: no usable prompt: bad\.jsonl:1"):
        run_serve_bench(bad_options, tmp_path)


# -- inputs as `run` reads them, cycling, and the sweep to saturation ---------------------------


def test_a_small_input_is_cycled_to_the_number_asked_and_says_so(
    stub: StubServer, tmp_path: Path
) -> None:
    (tmp_path / "cities.csv").write_text("city\nParis\nRome\nOslo\n", encoding="utf-8")
    options = build_options(
        **flags(tmp_path, url=[stub.url], num_prompts=7, inputs=["cities.csv"],
                template="Tell me about {{ city }}.")
    )  # fmt: skip
    recorder = Recorder(options.out_dir)
    outcome = run_serve_bench(options, tmp_path, recorder)
    assert outcome.outcome == "ok"
    assert outcome.document["runs"][0]["metrics"]["completed"] == 7
    workload = outcome.document["config"]["workload"]
    assert workload.startswith("cities.csv: 7 requests from 3 prompts, cycled")
    assert any("7 requests from 3 prompts, cycled" in note for note in recorder.notes)

    # without --num-prompts each prompt goes once
    once = build_options(
        **flags(tmp_path, url=[stub.url], num_prompts=None, inputs=["cities.csv"],
                template="Tell me about {{ city }}.", out=Path("once"))
    )  # fmt: skip
    assert run_serve_bench(once, tmp_path).document["runs"][0]["metrics"]["completed"] == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sweep": 3, "request_rate": "2"}, r"--sweep chooses its own loads"),
        ({"sweep": 3, "max_concurrency": "4"}, r"--sweep chooses its own loads"),
        ({"template": "{{ x }}"}, r"--template, --prompt-field and --format read input files"),
    ],
)
def test_sweep_and_input_flags_refuse_what_does_not_fit(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        build_options(**flags(tmp_path, **changes))


def test_a_template_typo_is_refused_before_any_request(stub: StubServer, tmp_path: Path) -> None:
    (tmp_path / "cities.csv").write_text("city\nParis\n", encoding="utf-8")
    options = build_options(
        **flags(tmp_path, url=[stub.url], inputs=["cities.csv"], template="{{ cty }}")
    )
    with pytest.raises(InputError, match=r"'cty'.*did you mean 'city'"):
        run_serve_bench(options, tmp_path)
    assert stub.stats()["requests"] == 0


def test_a_sweep_to_saturation_records_its_plan_roles_and_knee(
    stub: StubServer, tmp_path: Path
) -> None:
    from hpcinfer.bench.documents import validate_result
    from hpcinfer.report.serve_section import serve_section

    options = ServeBenchOptions(
        out_dir=tmp_path / "out", urls=(stub.url,), vocab_size=50, input_len=4, output_len=3,
        num_prompts=6, sweep=2,
    )  # fmt: skip
    recorder = Recorder(options.out_dir)
    outcome = run_serve_bench(options, tmp_path, recorder)
    assert outcome.outcome == "ok"
    assert recorder.runs_on_disk == [1, 2, 3, 4]
    document = outcome.document
    runs = document["runs"]
    assert [r["load"]["role"] for r in runs] == ["synchronous", "throughput", "rate", "rate"]
    assert runs[0]["load"]["max_concurrency"] == 1 and runs[1]["load"]["mode"] == "all-at-once"
    plan = document["sweep"]
    assert plan["synchronous_rate"] == runs[0]["metrics"]["request_throughput"]
    assert plan["rates"] == [r["load"]["rate"] for r in runs[2:]]
    assert plan["arrivals"] == "Poisson arrivals"
    knee = plan["knee"]
    assert knee["criterion"].startswith("TTFT and TPOT p50 and p99 within 2x")
    assert knee["label"] is None or knee["label"].endswith(" req/s")
    validate_result(options.out_dir / "serve.json", document)
    section = serve_section(options.out_dir / "serve.json", document)
    assert any(("knee" in s or "Latency" in s) and "req/s" in s for s in section.reading[1:2])
