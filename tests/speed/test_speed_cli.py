"""``geoptim speed``: the byte counter against known answers and independent declarations, the
C kernels' declared loads and stores against what the kernels do, and the command end to end
(tiny sizes; no timing is asserted)."""

import contextlib
import importlib.util
import json

import pytest
import torch

import geoptim
from geoptim import _compiled, cli
from geoptim.cli import _bandwidth, speed
from geoptim.cli._bandwidth import KERNEL_ACCESS, count_bytes

N = 10_000  # elements per tensor: per-tensor scalars add < 0.01 byte per element


def _traffic(fn):
    count = count_bytes(fn)
    assert not count.unseen
    return count.read, count.written


# ---------------------------------------------------------------- known answers, one op each


def test_primitive_ops_move_their_operands_once():
    x, y, v = torch.randn(N), torch.randn(N), torch.randn(N)
    assert _traffic(lambda: x.add_(y)) == (8 * N, 4 * N)
    assert _traffic(lambda: x.copy_(y)) == (4 * N, 4 * N)  # the target is only written
    assert _traffic(lambda: x * 2) == (4 * N, 4 * N)
    assert _traffic(lambda: v.addcmul_(y, y)) == (8 * N, 4 * N)  # y passed twice, read once
    assert _traffic(lambda: x.bfloat16().float()) == (6 * N, 6 * N)
    assert _traffic(lambda: torch._foreach_norm([x, y])) == (8 * N, 8)
    assert _traffic(lambda: x + torch.tensor(1.0).expand(N)) == (4 * N + 4, 4 * N)
    assert _traffic(lambda: (x.view(100, 100).t(), x.detach(), torch.empty(N))) == (0, 0)
    out = torch.empty(N)
    assert _traffic(lambda: torch.mul(x, y, out=out)) == (8 * N, 4 * N)


# ---------------------------------------------------------------- whole steps, declared passes


def _params(count=4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(N, generator=gen, dtype=dtype).requires_grad_() for _ in range(count)]
    for p in params:
        p.grad = torch.randn(N, generator=gen, dtype=dtype)
    return params


#: Bytes per float32 parameter of one steady-state step, from each implementation's passes:
#: ``(pass, tensors it reads, tensors it writes)``.
DECLARED = {
    "torch SGD-momentum foreach": (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=True),
        [("buf *= momentum", 1, 1), ("buf += g", 2, 1), ("w -= lr buf", 2, 1)],
    ),
    "torch SGD-momentum fused": (
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, fused=True),
        [("one kernel: w, g, buf", 3, 2)],
    ),
    "torch AdamW fused": (
        lambda ps: torch.optim.AdamW(ps, fused=True),
        [("one kernel: w, g, m, v", 4, 3)],
    ),
    "geoptim Lion (C kernel)": (
        lambda ps: geoptim.Lion(ps, weight_decay=0.1),
        [("interp: w, g, m", 3, 2)],
    ),
    "geoptim LPSGD (C kernel)": (lambda ps: geoptim.LPSGD(ps, p=6.0), [("lp: w, g", 2, 1)]),
}


@pytest.mark.parametrize("name", DECLARED)
def test_a_step_moves_the_bytes_its_passes_declare(name):
    factory, passes = DECLARED[name]
    params = _params()
    optimizer = factory(params)
    optimizer.step()
    optimizer.step()
    read, written = _traffic(optimizer.step)
    numel = sum(p.numel() for p in params)
    assert read / numel == pytest.approx(4 * sum(r for _, r, _ in passes), abs=0.02)
    assert written / numel == pytest.approx(4 * sum(w for _, _, w in passes), abs=0.02)


@pytest.mark.parametrize("case", ["fp32", "bf16", "channels_last"])
def test_every_row_is_counted_and_moves_at_least_its_minimum(case):
    """No implementation can move less than its update rule's minimal bytes: a smaller count
    means a pass the counter cannot see (as would a fast path that bypasses both ATen and
    ``_compiled.launch``)."""
    spec = speed.make_cases(8 * 2048, 8)[case]
    params = speed._make_tensors(spec, "cpu", 0)
    grads = speed._make_tensors(spec, "cpu", 1)
    element = params[0].element_size()
    for name in [*speed.available(), "lion:foreach", "adan:foreach"]:
        row = speed._Row(name, speed.resolve(name), params, grads)
        row.step()
        count = count_bytes(row.step)
        assert not count.unseen, name
        assert count.total / spec.numel >= row.entry.accesses * element, name


def test_a_kernel_without_a_declaration_is_reported_unseen(monkeypatch):
    monkeypatch.delitem(KERNEL_ACCESS, "lion")
    optimizer = geoptim.Lion(_params(1), weight_decay=0.1)
    count = count_bytes(optimizer.step)
    assert count.unseen == ["C kernel 'lion'"] and count.kernels == 1
    assert _compiled.launch.__module__ == "geoptim._compiled"  # the patch is undone


def test_a_count_below_the_minimum_is_marked_incomplete(monkeypatch):
    """A fast path the counter cannot see (here: every C kernel hidden from it) leaves fewer
    bytes than the update rule must move; the row is then marked, not reported as fast."""
    monkeypatch.setattr(_bandwidth, "_counting_kernels", lambda count: contextlib.nullcontext())
    case = speed.Case("fp32", ((4096,),) * 2)
    params, grads = speed._make_tensors(case, "cpu", 0), speed._make_tensors(case, "cpu", 1)
    row = speed._Row("lion", speed.resolve("lion"), params, grads)
    row.step()
    row.count = count_bytes(row.step)
    row.times = [1e-3]
    result = speed._result(row, case)
    assert result["bytes_per_param"] < 1 and not result["count_complete"]
    speed._add_ratios([result])
    assert result["copy_fraction"] is None
    assert "?" in speed.table([{**result, "x_fp32": None}])


# ---------------------------------------------------------------- the C kernels' declarations


def _kernel_calls(monkeypatch):
    """Every ``launch`` call of one float64 step of optimizers that use each C kernel:
    ``(name, lists as they were before the call, the other arguments)``."""
    calls = []
    original = _compiled.launch

    def record(name, lists, *args, **kwargs):
        snapshot = [None if c is None else [t.clone() for t in c] for c in lists]
        calls.append((name, snapshot, args, kwargs))
        original(name, lists, *args, **kwargs)

    monkeypatch.setattr(_compiled, "launch", record)
    for make in (
        lambda ps: geoptim.Lion(ps, weight_decay=0.1),
        lambda ps: geoptim.SepNorm(ps, weight_decay=0.1),
        lambda ps: geoptim.OrtSepNorm(ps, weight_decay=0.1),
        lambda ps: geoptim.LPSGDM(ps, p=6.0, weight_decay=0.1),
        lambda ps: geoptim.Adan(ps, weight_decay=0.02),
        lambda ps: geoptim.AdanAGR(ps, weight_decay=0.02),
    ):
        optimizer = make(_params(2, torch.float64))
        optimizer.step()
        optimizer.step()
    monkeypatch.setattr(_compiled, "launch", original)
    return calls


def test_declared_loads_and_stores_match_what_each_kernel_does(monkeypatch):
    """On random contents, a list is stored iff the kernel changes it, loaded iff other
    contents in it change some result (a list only stored is overwritten whatever it held)."""
    calls = {}
    for name, lists, args, kwargs in _kernel_calls(monkeypatch):
        calls[name] = (lists, args, kwargs)  # the last: a steady-state step
    assert set(calls) == set(KERNEL_ACCESS)

    def run(lists, args, kwargs):
        fresh = [None if c is None else [t.clone() for t in c] for c in lists]
        _compiled.launch(name, fresh, *args, **kwargs)
        return fresh

    def fresh_values(column):
        return [torch.rand_like(t) + 0.5 for t in column]  # positive: second moments stay real

    for name, (recorded, args, kwargs) in calls.items():
        lists = [None if c is None else fresh_values(c) for c in recorded]
        after = run(lists, args, kwargs)
        for k, mode in enumerate(KERNEL_ACCESS[name]):
            if lists[k] is None:
                continue
            stored = any(not torch.equal(a, b) for a, b in zip(after[k], lists[k]))
            changed = [fresh_values(c) if i == k else c for i, c in enumerate(lists)]
            perturbed = run(changed, args, kwargs)
            loaded = any(
                not torch.equal(a, b)
                for column, other in zip(after, perturbed)
                if column is not None
                for a, b in zip(column, other)
            )
            assert (("r" in mode), ("w" in mode)) == (loaded, stored), (name, k, mode)


# ---------------------------------------------------------------- the command


def test_tiny_run_writes_markdown_and_json(tmp_path, capsys):
    out_json, out_md = tmp_path / "out" / "speed.json", tmp_path / "speed.md"
    argv = ["speed", "--numel", "4000", "--tensors", "4", "--threads", "1", "--rounds", "1"]
    argv += ["--budget", "0.01", "--cases", "fp32", "bf16", "small", "--clock", "cpu"]
    argv += ["--optimizers", "lion", "adan_agr", "lion:foreach"]
    argv += ["--json", str(out_json), "--markdown", str(out_md)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "[3/3] small: 20,000 float32 params in 20 flat tensors, 1 thread" in printed
    payload = json.loads(out_json.read_text())
    assert set(payload) == {"run", "results", "curvature"}
    assert set(payload["run"]) == {
        *("command", "date", "machine", "load_start", "load_end", "seconds", "notes")
    }
    results = payload["results"]
    names = {"copy", "sgdm_foreach", "sgdm_fused", "adamw_fused", "lion", "adan_agr"}
    names |= {"lion:foreach", "adan"}  # the references and the AGR row's base are added
    assert {r["name"] for r in results} == names
    assert len(results) == 3 * len(names)
    row = {(r["name"], r["case"]): r for r in results}
    assert row["sgdm_foreach", "fp32"]["x_sgdm_foreach"] == pytest.approx(1.0)
    assert row["adamw_fused", "bf16"]["adamw_fraction"] == pytest.approx(1.0)
    assert row["copy", "small"]["copy_fraction"] == pytest.approx(1.0)
    assert row["lion", "fp32"]["x_fp32"] == pytest.approx(1.0)
    assert row["lion", "fp32"]["bytes_per_param"] == pytest.approx(20, abs=0.1)
    assert row["lion", "bf16"]["min_bytes_per_param"] == 10
    assert row["adan_agr", "fp32"]["x_base"] == pytest.approx(
        row["adan_agr", "fp32"]["ms"] / row["adan", "fp32"]["ms"]
    )
    assert row["lion", "small"]["numel"] == 20_000 and row["lion", "small"]["threads"] == 1
    assert row["lion", "fp32"]["state_bytes_per_param"] == pytest.approx(4.0, abs=0.01)
    assert row["lion", "fp32"]["kept_bytes_per_param"] == 0
    curvature = payload["curvature"]
    assert curvature["hessian_ms_per_step"] == pytest.approx(
        curvature["hessian_ms_per_estimate"] / 100
    )
    markdown = out_md.read_text()
    assert markdown.startswith("## `geoptim speed`, ")
    assert "- command: `geoptim speed --device cpu --numel 4e+03 --tensors 4 --cases" in markdown
    assert "--budget 0.01 --clock cpu --optimizers lion adan_agr lion:foreach`" in markdown
    assert "### bf16: 4,000 bfloat16 params in 4 flat tensors, 1 thread" in markdown
    assert "| geoptim Lion (foreach) |" in markdown and "% AdamW" in markdown
    assert "CurvaturePScheduler cost" in markdown
    assert speed.report(payload) == markdown  # the JSON holds everything the tables show
    summary = markdown.split("### Summary, 1 thread")[1].split("###")[0]
    lion = next(line for line in summary.splitlines() if line.startswith("| geoptim Lion |"))
    cells = lion.split("|")[2:-1]
    assert len(cells) == len(speed.SUMMARY) and cells[-3].strip() == ""  # no channels_last
    assert cells[5].strip() == f"{row['lion', 'bf16']['x_fp32']:.2f}"


def test_missing_peers_are_skipped_with_a_note(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n: None if n == "lion_pytorch" else find_spec(n)
    )
    notes = []
    assert speed._names(["lion_pytorch", "po_lion"], notes) == [*speed.REFERENCES, "po_lion"]
    assert notes == [
        "lion_pytorch skipped: lion_pytorch is not installed (pip install geoptim[speed])"
    ]


def test_interleaved_rounds_sample_every_sampler_once_per_round():
    calls = []

    def sampler(index):
        return lambda: calls.append(index) or float(index)

    samples = speed.interleaved([sampler(0), sampler(1), sampler(2)], 7, 1e9, seed=0)
    assert samples == [[0.0] * 7, [1.0] * 7, [2.0] * 7]
    rounds = [calls[i : i + 3] for i in range(0, 21, 3)]
    assert all(sorted(r) == [0, 1, 2] for r in rounds) and len(set(map(tuple, rounds))) > 1
    assert [len(s) for s in speed.interleaved([sampler(0)], 7, 0.0, seed=0)] == [3]


def test_the_cpu_clock_is_refused_on_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.main(["speed", "--device", "cuda", "--clock", "cpu"]) == 2
    assert "--clock cpu: a GPU's time is not the process's CPU time" in capsys.readouterr().err


def test_unknown_rows_are_rejected():
    with pytest.raises(ValueError, match="unknown row 'nope'"):
        speed.resolve("nope")
    with pytest.raises(ValueError, match="geoptim optimizers only"):
        speed.resolve("sgdm_fused:foreach")


def test_cases_have_the_requested_shapes():
    cases = speed.make_cases(10**7, 80)
    assert cases["fp32"].numel == 10**7 and len(cases["fp32"].shapes) == 80
    assert cases["bf16"].dtype == torch.bfloat16
    conv = cases["channels_last"]
    assert conv.shapes[0] == (118, 118, 3, 3) and abs(conv.numel - 10**7) < 0.01 * 10**7
    weight = speed._make_tensors(speed.Case("c", ((4, 3, 3, 3),), channels_last=True), "cpu", 0)
    assert weight[0].is_contiguous(memory_format=torch.channels_last)
    assert not weight[0].is_contiguous()
    assert (cases["small"].numel, len(cases["small"].shapes)) == (20_000, 20)


def test_kept_bytes_are_the_allocations_a_step_holds_outside_its_state():
    """A workspace kept between steps counts, once (the first step); the state does not."""
    params = _params(2)
    workspace = {}

    def step():
        if not workspace:
            workspace["buffer"] = torch.empty(2 * N)  # kept: 8 bytes per parameter
            workspace["state"] = torch.zeros(2 * N)  # listed as owned
        torch.zeros(3 * N).add_(1)  # a temporary: freed on return

    def owned():
        return [*params, workspace["state"]]

    assert _bandwidth.kept_bytes(step, owned) == 4 * 2 * N
    assert _bandwidth.kept_bytes(step, owned) == 0  # reused, not allocated again
    optimizer = torch.optim.AdamW(params, fused=True)

    def params_and_state():
        return [*params, *(v for state in optimizer.state.values() for v in state.values())]

    assert _bandwidth.kept_bytes(optimizer.step, params_and_state) == 0


def test_tensor_bytes_counts_distinct_elements():
    assert _bandwidth.tensor_bytes(torch.zeros(3, 1).expand(3, 5)) == 12
    assert _bandwidth.tensor_bytes(torch.zeros(0, dtype=torch.float64)) == 0
    assert _bandwidth.tensor_bytes(torch.zeros(2, 2, dtype=torch.bfloat16)) == 8
