"""`hpcinfer bench fom --url/--endpoints` against the stub server (exact token counts): the
flags it refuses, a case whose max-model-len is not the server's refused before anything is
sent, what each request asks for, exact lengths checked in every answer, fom.json/fom.csv
and the FOM's CSV rows, the report reading them, and the library call."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

import hpcinfer
from hpcinfer.core.endpoints_registry import READY, Endpoint, write_registry
from hpcinfer.errors import SpecError
from hpcinfer.report import render_report
from hpcinfer.testing.stub_server import StubServer
from tests.conftest import REPO
from tests.harness import call_main

CPU_TINY_512 = ("FOM1", "FOM2")  # the cpu-tiny cases at max-model-len 512 (FOM3: 2048)


class Fom:
    """`hpcinfer bench fom ...` in this process, in tmp_path; returns (code, output)."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
        self.tmp_path, self.monkeypatch, self.capsys = tmp_path, monkeypatch, capsys
        self.stdout = ""
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def __call__(self, *args: str) -> tuple[int, str]:
        ran = call_main(["bench", "fom", *args], self.monkeypatch, self.capsys)
        self.stdout = ran.out
        return ran.code, " ".join(ran.output.split())


@pytest.fixture
def fom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Fom:
    return Fom(tmp_path, monkeypatch, capsys)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# -- refused before anything is sent ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tp", "8", "--dtype", "float16"], "drop --dtype, --tp"),
        (["--pp", "2"], "drop --pp"),
        (["--max-num-seqs", "4", "--enforce-eager"], "drop --max-num-seqs, --enforce-eager"),
        (["--set", "engine.max_model_len=512"], "drop engine.max_model_len"),
        (["--preset", "cpu-tiny", "--only", "FOM9"], "--only FOM9: preset cpu-tiny has no case"),
        (["--tokenizer", "t", "--vocab-size", "9"], "--tokenizer and --vocab-size"),
        (["--case", "A:1:1"], "--case 'A:1:1': write NAME:INPUT_LEN"),
    ],
)
def test_bad_flags_with_a_server_exit_2_and_send_nothing(
    fom: Fom, args: list[str], message: str
) -> None:
    with StubServer(max_model_len=512) as stub:
        code, output = fom("--url", stub.url, *args)
        assert code == 2, output
        assert message in output and "Traceback" not in output
        assert stub.stats()["requests"] == 0
    assert not Path("bench-out").exists()


def test_server_flags_without_a_server_are_refused(fom: Fom) -> None:
    code, output = fom("--vocab-size", "100", "--timeout", "5m")
    assert code == 2
    assert "--vocab-size, --timeout: for a running server only; add --url URL" in output


def test_a_case_whose_max_model_len_is_not_the_servers_is_refused_naming_both(fom: Fom) -> None:
    with StubServer(max_model_len=512) as stub:
        code, output = fom("--url", stub.url, "--preset", "cpu-tiny", "--vocab-size", "1000")
        assert code == 2, output
        assert (
            f"FOM3 needs max-model-len 2048; the server at {stub.url} serves max-model-len 512"
            in output
        )
        assert "--only FOM1,FOM2" in output  # the fix: the cases that do match
        assert stub.stats()["requests"] == 0  # checked before the first request
    with StubServer(max_model_len=4096) as stub:  # none matches
        code, output = fom("--url", stub.url, "--preset", "cpu-tiny", "--vocab-size", "1000")
        assert code == 2
        assert "FOM1 needs max-model-len 512; FOM2 needs max-model-len 512; FOM3 needs" in output
        assert "start the server with the cases' --max-model-len" in output
        assert stub.stats()["requests"] == 0


def test_one_server_only(fom: Fom, tmp_path: Path) -> None:
    with StubServer(max_model_len=512) as one, StubServer(max_model_len=512) as two:
        write_registry(
            tmp_path / "endpoints.json",
            [Endpoint(one.url, "tiny", state=READY), Endpoint(two.url, "tiny", state=READY)],
        )
        code, output = fom("--endpoints", "endpoints.json", "--vocab-size", "1000")
        assert code == 2
        assert f"bench fom measures one server, and 2 are given ({one.url}, {two.url})" in output
        assert one.stats()["requests"] == two.stats()["requests"] == 0


# -- measured ---------------------------------------------------------------------------------


def test_cases_on_the_server_exact_lengths_and_the_fom_csv(fom: Fom, tmp_path: Path) -> None:
    with StubServer(max_model_len=512, keep_bodies=True, itl_s=0.001) as stub:
        code, output = fom(
            "--url", stub.url, "--preset", "cpu-tiny", "--only", "FOM1,FOM2", "--vocab-size",
            "1000", "--warmup-iters", "1", "--iters", "2", "--csv", "fom-rows.csv", "--json",
        )  # fmt: skip
        bodies = stub.bodies()
        stats = stub.stats()
    assert code == 0, output
    # 2 cases x (1 warm-up + 2 timed) batches of 4 requests, each asking for exact lengths
    assert stats["requests"] == stats["ok"] == 2 * 3 * 4
    assert stats["prompt_tokens"] == 3 * 4 * (448 + 64)
    assert stats["completion_tokens"] == 3 * 4 * (64 + 448)
    for body in bodies:
        assert body["ignore_eos"] is True and body["model"] == "tiny"
        assert body["max_tokens"] == body["min_tokens"] in (64, 448)
        assert len(body["prompt"]) == 512 - body["max_tokens"]
        assert all(0 <= token < 1000 for token in body["prompt"])
    assert len({tuple(body["prompt"]) for body in bodies}) == len(bodies)  # fresh every time

    document = json.loads((tmp_path / "bench-out" / "fom.json").read_text())
    assert document["kind"] == "fom"
    assert document["config"]["server"]["url"] == stub.url
    assert document["config"]["server"]["max_model_len"] == 512
    assert document["config"]["cases_from"] == "preset cpu-tiny (only FOM1, FOM2)"
    cases = document["cases"]
    assert [c["name"] for c in cases] == list(CPU_TINY_512)
    for case in cases:
        assert case["input_tokens"] == 4 * case["input_len"]
        assert case["output_tokens"] == 4 * case["output_len"]
        assert case["iterations"] == 2 and case["max_model_len"] == 512
        assert case["throughput"] == pytest.approx(
            (case["input_tokens"] + case["output_tokens"]) / case["latency_s"]
        )
        # the stub's pace is a floor: output_len - 1 gaps of 1 ms
        assert case["latency_s"] >= (case["output_len"] - 1) * 0.001
    assert document["fom"]["cases"] == list(CPU_TINY_512)
    assert document["fom"]["throughput"] == pytest.approx(sum(c["throughput"] for c in cases))
    assert json.loads(fom.stdout) == document  # --json prints the same
    assert "bench: FOM2: timed 2/2:" in output  # progress on stderr

    table = _rows(tmp_path / "bench-out" / "fom.csv")
    assert [row["case"] for row in table] == [*CPU_TINY_512, "FOM"]
    # the ALCF inference FOM's own rows: its header, one row per case; a server does not
    # say its precision or TP, so those cells are empty
    with (tmp_path / "fom-rows.csv").open(encoding="utf-8") as handle:
        header = handle.readline().strip()
    assert header == (
        "Model Name,precision,throughput,latency,batch size,tensor_parallel,input length,"
        "output length,context_length"
    )
    rows = _rows(tmp_path / "fom-rows.csv")
    assert [
        (r["Model Name"], r["precision"], r["batch size"], r["tensor_parallel"],
         r["input length"], r["output length"], r["context_length"])
        for r in rows
    ] == [
        ("tiny", "", "4", "", "448", "64", "512"),
        ("tiny", "", "4", "", "64", "448", "512"),
    ]  # fmt: skip
    for row, case in zip(rows, cases, strict=True):
        assert float(row["throughput"]) == pytest.approx(case["throughput"])
        assert float(row["latency"]) == pytest.approx(case["latency_s"])

    page = render_report(tmp_path / "bench-out")  # the report reads it as any fom.json
    assert "FOM1 + FOM2" in page and stub.url in page


def test_a_short_answer_is_an_error_naming_the_case(fom: Fom) -> None:
    with StubServer(max_model_len=512, answer_cap=10) as stub:
        code, output = fom(
            "--url", stub.url, "--case", "SHORT:100:50:2:512", "--vocab-size", "1000"
        )
    assert code == 1, output
    assert "SHORT: warm-up iteration 1, request 0: the server generated 10 tokens" in output
    assert "not exactly 50" in output and "ignore_eos and min_tokens" in output


def test_the_registry_gives_the_server_its_devices_and_mfu(fom: Fom, tmp_path: Path) -> None:
    model = tmp_path / "model"  # where vLLM says it loaded the model (its card's root)
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 2, "hidden_size": 128}')
    with StubServer(model=str(model), max_model_len=64) as stub:
        write_registry(
            tmp_path / "endpoints.json",
            [Endpoint(stub.url, str(model), node="n1", devices=["gpu0", "gpu1"], state=READY)],
        )
        code, output = fom(
            "--endpoints", "endpoints.json", "--case", "A:16:8:2:64", "--vocab-size", "100",
            "--iters", "1", "--peak-tflops", "1", "--quiet",
        )  # fmt: skip
    assert code == 0, output
    document = json.loads((tmp_path / "bench-out" / "fom.json").read_text())
    server = document["config"]["server"]
    assert (server["url"], server["node"], server["devices"]) == (stub.url, "n1", ["gpu0", "gpu1"])
    assert server["registry"] == "endpoints.json"
    (case,) = document["cases"]
    flops = 2 * 2 * (6 * 128 * 128 * 16 + 128 * 16 * 16) + 2 * 2 * 8 * 6 * 128 * 128
    assert case["flops_per_s"] == pytest.approx(flops / case["latency_s"])
    assert case["mfu"] == pytest.approx(case["flops_per_s"] / (1e12 * 2))


def test_library_call(tmp_path: Path) -> None:
    settings = hpcinfer.bench_settings(hpcinfer.JobSpec(), tmp_path / "out", iters=1)
    with StubServer(max_model_len=512) as stub:
        server = hpcinfer.FomServer(urls=(stub.url,), vocab_size=1000)
        document = hpcinfer.bench_fom(settings, "cpu-tiny", only=["FOM2"], server=server)
        with pytest.raises(SpecError, match="FOM3 needs max-model-len 2048"):
            hpcinfer.bench_fom(settings, "cpu-tiny", server=server)
    assert isinstance(document, hpcinfer.FomDocument)
    assert [case.name for case in document.cases] == ["FOM2"]
    assert document.cases[0].output_tokens == 4 * 448
    assert (tmp_path / "out" / "fom.json").exists()


def test_the_aurora_examples_step_runs_against_a_4096_server(fom: Fom, tmp_path: Path) -> None:
    """examples/aurora-llama405b-ray.yaml's `bench fom` step, as written, against a server
    of the FOM's --max-model-len 4096: FOM1 and FOM2 run, nothing is refused (the stub's
    model is not on this machine, so the ids come from --vocab-size)."""
    example = yaml.safe_load((REPO / "examples" / "aurora-llama405b-ray.yaml").read_text())
    (step,) = [s for s in example["job"]["steps"] if s.startswith("hpcinfer bench fom")]
    results = tmp_path / "results"
    results.mkdir()
    argv = shlex.split(step.replace("$RESULTS", str(results)))
    with StubServer(max_model_len=4096) as stub:
        write_registry(results / "endpoints.json", [Endpoint(stub.url, "tiny", state=READY)])
        code, output = fom(*argv[3:], "--vocab-size", "32000", "--iters", "1", "--quiet")
    assert code == 0, output
    document = json.loads((results / "fom" / "fom.json").read_text())
    assert document["fom"]["cases"] == ["FOM1", "FOM2"]
    assert len(_rows(results / "fom-rows.csv")) == 2
