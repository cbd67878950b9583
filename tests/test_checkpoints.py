import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from geomfast import checkpoints as ck
from geomfast.checkpoints import (
    Checkpoint,
    parse_revision,
    pythia_revisions,
    resolve_checkpoints,
    revision_sort_key,
    select_revisions,
)


def _write_model_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def test_pythia_schedule_has_154_revisions():
    revs = pythia_revisions()
    assert len(revs) == 154
    assert revs[:12] == ["step0", "step1", "step2", "step4", "step8", "step16", "step32", "step64",
                         "step128", "step256", "step512", "step1000"]
    assert revs[-1] == "step143000"
    assert len(set(revs)) == 154


@pytest.mark.parametrize("name, expected", [
    ("step1000", (1000, None)),
    ("step1000-tokens4B", (1000, 4_000_000_000)),
    ("stage1-step1000-tokens5B", (1000, 5_000_000_000)),
    ("stage2-ingredient1-step1000-tokens10B", (1000, 10_000_000_000)),
    ("main", (None, None)),
    ("step0", (0, None)),
    ("checkpoint-2500", (2500, None)),
    ("global_step300", (300, None)),
    ("1200", (1200, None)),
    ("step20000-tokens84B", (20000, 84_000_000_000)),
    ("step10-tokens1.5T", (10, 1_500_000_000_000)),
])
def test_parse_revision(name, expected):
    assert parse_revision(name) == expected


def test_sort_key_orders_stages_then_steps():
    names = ["stage2-ingredient2-step100-tokens1B", "stage1-step2000-tokens8B", "main",
             "stage2-ingredient1-step500-tokens2B", "stage1-step1000-tokens4B", "stage2-ingredient1-step100-tokens1B"]
    assert sorted(names, key=revision_sort_key) == [
        "stage1-step1000-tokens4B", "stage1-step2000-tokens8B",
        "stage2-ingredient1-step100-tokens1B", "stage2-ingredient1-step500-tokens2B",
        "stage2-ingredient2-step100-tokens1B", "main",
    ]
    plain = ["step20", "step3", "main", "step100"]
    assert sorted(plain, key=revision_sort_key) == ["step3", "step20", "step100", "main"]


def test_select_all_every_log_range():
    revs = pythia_revisions()
    assert select_revisions(revs, None) == revs
    assert select_revisions(revs, "all") == revs
    every = select_revisions(revs, "every:10")
    assert every[0] == "step0" and every[1] == revs[10] and every[-1] == "step143000"
    log = select_revisions(revs, "log:12")
    assert len(log) == 12 and log[0] == "step0" and log[-1] == "step143000"
    steps = [parse_revision(r)[0] for r in log]
    assert steps == sorted(steps)
    # log spacing: many small steps, few large ones
    assert sum(s <= 1000 for s in steps) >= 5
    assert select_revisions(revs, "range:500-3000") == ["step512", "step1000", "step2000", "step3000"]
    assert select_revisions(revs, "range:142000-") == ["step142000", "step143000"]
    with pytest.raises(ValueError, match="more than once"):
        resolve_checkpoints(["org/a", "org/b", "org/a"])
    with pytest.raises(ValueError, match="A <= B"):
        select_revisions(revs, "range:3000-500")
    with pytest.raises(ValueError, match="selects no checkpoint"):
        select_revisions(revs, "range:143001-")
    assert select_revisions(revs, "log:1000") == revs


def test_select_paper_pythia_and_olmo():
    paper = select_revisions(pythia_revisions(), "paper")
    steps = [parse_revision(r)[0] for r in paper]
    assert steps[:7] == [0, 8, 16, 32, 64, 128, 256]
    assert steps[7:9] == [512, 1000]
    assert len(paper) == 7 + 1 + 143
    olmo = [f"step{s}-tokens{s // 250}B" for s in (0, 1000, 5000, 10000, 15000, 20000, 25000, 30000)]
    assert [parse_revision(r)[0] for r in select_revisions(olmo, "paper")] == [0, 1000, 5000, 10000, 20000, 30000]


def test_select_explicit_list_and_errors():
    revs = pythia_revisions()
    assert select_revisions(revs, "step2000, 1000,step0") == ["step0", "step1000", "step2000"]
    assert select_revisions(revs, "step1000,main") == ["step1000", "main"]
    with pytest.raises(ValueError, match="step999"):
        select_revisions(revs, "step999")
    with pytest.raises(ValueError, match="every:K"):
        select_revisions(revs, "every:x")
    with pytest.raises(ValueError, match="step"):
        select_revisions(["main", "foo", "bar"], "log:2")


def test_resolve_pythia_offline_uses_schedule():
    cps = resolve_checkpoints("EleutherAI/pythia-160m", local_files_only=True)
    assert len(cps) == 154
    assert cps[0] == Checkpoint(model="EleutherAI/pythia-160m", revision="step0", source="EleutherAI/pythia-160m",
                                hub_revision="step0", step=0, tokens=None, order=0)
    assert [c.order for c in cps] == list(range(154))
    sel = resolve_checkpoints("EleutherAI/pythia-70m-deduped", "range:1000-3000", local_files_only=True)
    assert [c.step for c in sel] == [1000, 2000, 3000]


def test_resolve_hub_branches_online(monkeypatch):
    branches = ["main", "stage1-step2000-tokens9B", "stage1-step1000-tokens5B", "stage1-step0-tokens0B",
                "stage2-ingredient1-step1000-tokens10B"]
    monkeypatch.setattr(ck, "_offline", lambda local_files_only: bool(local_files_only))
    monkeypatch.setattr(ck, "_list_hub_branches", lambda model_id: list(branches))
    cps = resolve_checkpoints("allenai/OLMo-2-0425-1B")
    assert [c.revision for c in cps] == ["stage1-step0-tokens0B", "stage1-step1000-tokens5B",
                                          "stage1-step2000-tokens9B", "stage2-ingredient1-step1000-tokens10B"]
    assert cps[1].tokens == 5_000_000_000 and cps[1].step == 1000 and cps[1].hub_revision == cps[1].revision


def test_resolve_offline_explicit_names_are_trusted():
    cps = resolve_checkpoints("allenai/OLMo-1B-hf", "step20000-tokens84B,step1000-tokens4B", local_files_only=True)
    assert [c.step for c in cps] == [1000, 20000]
    assert cps[0].tokens == 4_000_000_000
    # a model without steps offline: one 'main' checkpoint
    cps = resolve_checkpoints("some-org/some-model", local_files_only=True)
    assert [c.revision for c in cps] == ["main"]
    pinned = resolve_checkpoints("some-org/some-model@v2", local_files_only=True)
    assert pinned[0].hub_revision == "v2" and pinned[0].source == "some-org/some-model"


def test_local_checkpoint_folder(tmp_path):
    root = tmp_path / "run"
    for name in ("step100", "step20", "checkpoint-5", "stage1-step3-tokens1B"):
        _write_model_folder(root / name)
    (root / "logs").mkdir()  # not a model folder: ignored
    cps = resolve_checkpoints(str(root))
    assert [c.revision for c in cps] == ["checkpoint-5", "step20", "step100", "stage1-step3-tokens1B"]
    assert [c.step for c in cps] == [5, 20, 100, 3]
    # keyed by the resolved folder: the same run however it is typed
    assert all(c.model == str(root.resolve()) and c.hub_revision is None for c in cps)
    assert [c.model for c in resolve_checkpoints(str(root / ".." / "run"))] == [c.model for c in cps]
    # a sub-folder named like a checkpoint that cannot load is reported, not dropped silently
    (root / "step7").mkdir()
    with pytest.warns(UserWarning, match="step7"):
        assert len(resolve_checkpoints(str(root))) == 4
    assert cps[0].source == str((root / "checkpoint-5").resolve())
    assert [c.order for c in cps] == [0, 1, 2, 3]
    sub = resolve_checkpoints(str(root), "range:10-200")
    assert [c.step for c in sub] == [20, 100] and [c.order for c in sub] == [0, 1]


def test_single_model_folder_and_errors(tmp_path):
    one = _write_model_folder(tmp_path / "step700")
    cps = resolve_checkpoints(str(one))
    assert len(cps) == 1 and cps[0].revision == "main" and cps[0].step == 700 and cps[0].hub_revision is None
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="config.json"):
        resolve_checkpoints(str(empty))
    with pytest.raises(FileNotFoundError):
        resolve_checkpoints(str(tmp_path / "missing" / "folder"))


def test_post_training_series_order(tmp_path):
    sft = _write_model_folder(tmp_path / "sft")
    ids = ["allenai/OLMo-2-1124-7B", str(sft), "allenai/OLMo-2-1124-7B-DPO", "allenai/OLMo-2-1124-7B-Instruct"]
    cps = resolve_checkpoints(ids)
    assert [c.order for c in cps] == [0, 1, 2, 3]
    assert [c.revision for c in cps] == ids
    assert cps[1].source == str(sft.resolve()) and cps[1].hub_revision is None
    assert cps[0].source == ids[0] and cps[0].step is None
    assert len({c.model for c in cps}) == 1
    named = resolve_checkpoints(ids, series_name="olmo2-7b-post")
    assert all(c.model == "olmo2-7b-post" for c in named)
    comma = resolve_checkpoints("a/base,a/sft,a/dpo")
    assert [c.source for c in comma] == ["a/base", "a/sft", "a/dpo"]


def test_tiny_checkpoint_folder_round_trip(tmp_path):
    from helpers_models import make_checkpoint_folder

    from geomfast.models import load_model, load_tokenizer

    root = make_checkpoint_folder(tmp_path / "run", steps=(0, 4, 16), arch="olmo2")
    cps = resolve_checkpoints(str(root))
    assert [c.step for c in cps] == [0, 4, 16]
    m0, m1 = (load_model(c.source, c.hub_revision) for c in cps[:2])
    w0, w1 = (next(m.parameters()) for m in (m0, m1))
    assert w0.shape == w1.shape and not w0.equal(w1)
    assert len(load_tokenizer(cps[2].source)) <= m0.config.vocab_size


# ----------------------------------------------------------------------------- OLMo-2 stages

OLMO2 = "allenai/OLMo-2-0425-1B"
_S1 = [0, 1000, 2000, 5000, 10000, 15000, 20000, 25000]  # stage 1 (pretraining) ends at step 25000


def _olmo2_branches(ingredients=(1, 2), stage2_steps=(1000, 2000, 4000)):
    names = ["main"] + [f"stage1-step{s}-tokens{s // 250}B" for s in _S1]
    names += [f"stage2-ingredient{i}-step{s}-tokens{s // 200}B" for i in ingredients for s in stage2_steps]
    return names


def _online(monkeypatch, branches):
    monkeypatch.setattr(ck, "_offline", lambda local_files_only: bool(local_files_only))
    monkeypatch.setattr(ck, "_list_hub_branches", lambda model_id: list(branches))


def test_olmo2_stage2_ingredients_are_their_own_series_after_stage1(monkeypatch):
    _online(monkeypatch, _olmo2_branches())
    cps = resolve_checkpoints(OLMO2)
    s1 = [c for c in cps if c.model == OLMO2]
    # stage 1 is the pretraining series, with its own steps and nothing from stage 2
    assert [c.revision for c in s1] == [f"stage1-step{s}-tokens{s // 250}B" for s in _S1]
    assert [c.step for c in s1] == _S1
    # each ingredient is a series of its own that continues after the end of stage 1
    # (step 25000, 100B tokens), its revision the hub branch
    for i in (1, 2):
        key = f"{OLMO2} [stage2-ingredient{i}]"
        ing = [c for c in cps if c.model == key]
        assert [c.revision for c in ing] == [f"stage2-ingredient{i}-step{s}-tokens{s // 200}B"
                                             for s in (1000, 2000, 4000)]
        assert [c.hub_revision for c in ing] == [c.revision for c in ing]
        assert [c.step for c in ing] == [26000, 27000, 29000]
        assert [c.tokens for c in ing] == [105_000_000_000, 110_000_000_000, 120_000_000_000]
    assert {c.model for c in cps} == {OLMO2, f"{OLMO2} [stage2-ingredient1]", f"{OLMO2} [stage2-ingredient2]"}
    assert len(cps) == len(_S1) + 6 and [c.order for c in cps] == list(range(len(cps)))
    # no series has two checkpoints at one step (phases averages those), and every series is ordered
    for m in {c.model for c in cps}:
        steps = [c.step for c in cps if c.model == m]
        assert steps == sorted(set(steps))
    # the same checkpoints, keys and positions on every run, whatever order the hub lists them in
    _online(monkeypatch, list(reversed(_olmo2_branches())))
    assert resolve_checkpoints(OLMO2) == cps


def test_olmo2_stage2_rows_are_never_averaged_into_stage1(monkeypatch):
    from geomfast.phases import phases_from_rows

    _online(monkeypatch, _olmo2_branches())
    cps = resolve_checkpoints(OLMO2)
    rows = [dict(model=c.model, revision=c.revision, step=c.step, tokens=c.tokens, ord=c.order,
                 layer="last", pooling="last", rankme=100.0 + i, alpha=1.0, status="ok")
            for i, c in enumerate(cps)]
    res = {r.model: r for r in phases_from_rows(rows)}
    assert res[OLMO2].n_points == len(_S1)
    assert res[f"{OLMO2} [stage2-ingredient1]"].n_points == 3


def test_paper_for_olmo2_samples_stage1_only(monkeypatch):
    branches = _olmo2_branches(stage2_steps=(1000, 2000, 10000, 11931))
    revs = sorted([b for b in branches if b != "main"], key=revision_sort_key)
    paper = select_revisions(revs, "paper")
    assert paper == [f"stage1-step{s}-tokens{s // 250}B" for s in (0, 1000, 2000, 5000, 10000, 20000)]
    _online(monkeypatch, branches)
    cps = resolve_checkpoints(OLMO2, "paper")
    assert [c.revision for c in cps] == paper and {c.model for c in cps} == {OLMO2}
    assert [c.order for c in cps] == list(range(len(paper)))


def test_stage_selectors_use_global_steps_and_each_series(monkeypatch):
    _online(monkeypatch, _olmo2_branches())
    # a range is over the global step: early training is stage 1 only
    early = resolve_checkpoints(OLMO2, "range:0-10000")
    assert [c.step for c in early] == [0, 1000, 2000, 5000, 10000] and {c.model for c in early} == {OLMO2}
    late = resolve_checkpoints(OLMO2, "range:25000-27000")
    assert [(c.model, c.step) for c in late] == [
        (OLMO2, 25000), (f"{OLMO2} [stage2-ingredient1]", 26000), (f"{OLMO2} [stage2-ingredient1]", 27000),
        (f"{OLMO2} [stage2-ingredient2]", 26000), (f"{OLMO2} [stage2-ingredient2]", 27000)]
    # a bare step is a global step: stage 2's local step 2000 is not stage 1's step 2000
    assert [c.revision for c in resolve_checkpoints(OLMO2, "2000")] == ["stage1-step2000-tokens8B"]
    # every:K and log:N sample each series on its own (first, every K-th, last)
    every = resolve_checkpoints(OLMO2, "every:3")
    assert [c.step for c in every if c.model == OLMO2] == [0, 5000, 20000, 25000]
    assert [c.step for c in every if c.model.endswith("ingredient2]")] == [26000, 29000]
    log = resolve_checkpoints(OLMO2, "log:2")
    assert [(c.model, c.step) for c in log] == [
        (OLMO2, 0), (OLMO2, 25000), (f"{OLMO2} [stage2-ingredient1]", 26000),
        (f"{OLMO2} [stage2-ingredient1]", 29000), (f"{OLMO2} [stage2-ingredient2]", 26000),
        (f"{OLMO2} [stage2-ingredient2]", 29000)]


def test_later_stages_and_odd_names_are_deterministic(monkeypatch):
    branches = (["main", "foo", "stage1-step0-tokens0B", "stage1-step4000-tokens16B",
                 "stage2-step1000-tokens5B", "stage2-step2000",
                 "stage3-step500-tokens2B"])
    _online(monkeypatch, branches)
    cps = resolve_checkpoints(OLMO2)
    # names without a step ('main', 'foo') are not checkpoints of the schedule; a name without
    # tokens has none; stage 3 continues after stage 2, which continues after stage 1
    assert [(c.model, c.revision, c.step, c.tokens) for c in cps] == [
        (OLMO2, "stage1-step0-tokens0B", 0, 0),
        (OLMO2, "stage1-step4000-tokens16B", 4000, 16_000_000_000),
        (f"{OLMO2} [stage2]", "stage2-step1000-tokens5B", 5000, 21_000_000_000),
        (f"{OLMO2} [stage2]", "stage2-step2000", 6000, None),
        (f"{OLMO2} [stage3]", "stage3-step500-tokens2B", 6500, None),
    ]
    assert [c.revision for c in resolve_checkpoints(OLMO2, "main,stage3-step500-tokens2B")] == [
        "stage3-step500-tokens2B", "main"]
    # after several ingredients, where a stage 3 starts is not known: its steps stay its own
    # (local), said in its series name and in a warning
    _online(monkeypatch, _olmo2_branches() + ["stage3-step500-tokens2B"])
    with pytest.warns(UserWarning, match="stage3"):
        cps = resolve_checkpoints(OLMO2)
    last = cps[-1]
    assert (last.model, last.step, last.tokens) == (f"{OLMO2} [stage3 local steps]", 500, 2_000_000_000)
    assert revision_sort_key("stage2-ingredient2-step5-tokens1B") > revision_sort_key("stage2-ingredient1-step9000")


def test_stage2_without_a_known_stage1_end_keeps_local_steps_apart(monkeypatch):
    name = "stage2-ingredient1-step1000-tokens5B"
    monkeypatch.setattr(ck, "_cached_revisions", lambda model_id: [])
    # offline, the hub's branch list (and so the end of stage 1) is not known
    with pytest.warns(UserWarning, match="end of stage 1"):
        cps = resolve_checkpoints(OLMO2, name, local_files_only=True)
    assert [(c.model, c.revision, c.step, c.tokens) for c in cps] == [
        (f"{OLMO2} [stage2-ingredient1 local steps]", name, 1000, 5_000_000_000)]
    with pytest.warns(UserWarning, match="end of stage 1"):
        pinned = resolve_checkpoints(f"{OLMO2}@{name}", local_files_only=True)
    assert pinned == cps
    # online, a pinned stage-2 revision is placed from the hub's branch list
    _online(monkeypatch, _olmo2_branches())
    pinned = resolve_checkpoints(f"{OLMO2}@{name}")
    assert [(c.model, c.revision, c.hub_revision, c.step, c.tokens) for c in pinned] == [
        (f"{OLMO2} [stage2-ingredient1]", name, name, 26000, 105_000_000_000)]


def test_stage_starts_place_a_later_stage_whose_start_the_list_does_not_tell(monkeypatch):
    """Offline (the compute node of a cluster, the HF cache filled beforehand) the end of stage 1
    is not known: stage_starts says it, and the series gets the keys, steps and tokens an online
    run gives it, without a warning. Where the list tells the end too, the two must agree."""
    import warnings

    name = "stage2-ingredient1-step1000-tokens5B"
    monkeypatch.setattr(ck, "_cached_revisions", lambda model_id: [name])
    _online(monkeypatch, _olmo2_branches())
    online = resolve_checkpoints(OLMO2, name)
    assert [(c.model, c.step, c.tokens) for c in online] == [
        (f"{OLMO2} [stage2-ingredient1]", 26000, 105_000_000_000)]
    for start in ("stage1-step25000-tokens100B", (25000, 100_000_000_000)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert resolve_checkpoints(OLMO2, name, local_files_only=True, stage_starts={2: start}) == online
            assert resolve_checkpoints(f"{OLMO2}@{name}", local_files_only=True,
                                       stage_starts={2: start}) == online
    # a start without tokens: the steps are global, the tokens unknown (None), the key the same
    (c,) = resolve_checkpoints(OLMO2, name, local_files_only=True, stage_starts={2: 25000})
    assert (c.model, c.step, c.tokens) == (f"{OLMO2} [stage2-ingredient1]", 26000, None)
    # online, the same start is accepted and another refused
    assert resolve_checkpoints(OLMO2, name, stage_starts={2: "step25000"}) == online
    with pytest.raises(ValueError, match=r"stage_starts\[2\] is step 24000.*end stage 1 at step 25000"):
        resolve_checkpoints(OLMO2, name, stage_starts={2: "stage1-step24000"})
    # the warning without a start tells how to give one
    with pytest.warns(UserWarning, match=r"--stage-start 2=REVISION"):
        resolve_checkpoints(OLMO2, name, local_files_only=True)


@pytest.mark.parametrize("bad, what", [
    ({1: 1000}, r"stage number >= 2"), ({"2": 1000}, r"stage number >= 2"), ({2: "main"}, r"carrying a step"),
    ({2: -5}, r"step that is an int >= 0"), ({2: (1000, 1.5)}, r"tokens that is an int >= 0"),
    ([(2, 1000)], r"must be a mapping")])
def test_stage_starts_refuses_what_it_cannot_read(bad, what):
    with pytest.raises(ValueError, match=what):
        resolve_checkpoints(OLMO2, "stage2-step1000", local_files_only=True, stage_starts=bad)


def test_local_folder_with_stages(tmp_path):
    root = tmp_path / "olmo2"
    for name in ("stage1-step0-tokens0B", "stage1-step3000-tokens12B", "stage2-ingredient1-step500-tokens2B",
                 "stage2-ingredient2-step500-tokens2B"):
        _write_model_folder(root / name)
    cps = resolve_checkpoints(str(root))
    key = str(root.resolve())
    assert [(c.model, c.step, c.tokens) for c in cps] == [
        (key, 0, 0), (key, 3000, 12_000_000_000),
        (f"{key} [stage2-ingredient1]", 3500, 14_000_000_000),
        (f"{key} [stage2-ingredient2]", 3500, 14_000_000_000)]
    assert cps[2].source == str((root / "stage2-ingredient1-step500-tokens2B").resolve())
    assert [c.revision for c in resolve_checkpoints(str(root), "paper")] == [
        "stage1-step0-tokens0B", "stage1-step3000-tokens12B"]
    # a folder may hold only some of stage 1: a start given for stage 2 wins, with a warning
    with pytest.warns(UserWarning, match=r"stage_starts\[2\] is step 9000.*placing stage 2 at the start given"):
        later = resolve_checkpoints(str(root), stage_starts={2: "stage1-step9000-tokens36B"})
    assert [(c.model, c.step, c.tokens) for c in later[2:]] == [
        (f"{key} [stage2-ingredient1]", 9500, 38_000_000_000),
        (f"{key} [stage2-ingredient2]", 9500, 38_000_000_000)]


# ----------------------------------------------------------------------------- nothing selected

def test_paper_without_step_branches_is_an_error_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(ck, "_cached_revisions", lambda model_id: [])
    with pytest.raises(ValueError, match=r"(?s)allenai/OLMo-1B-hf.*paper.*main.*offline"):
        resolve_checkpoints("allenai/OLMo-1B-hf", "paper")
    with pytest.warns(UserWarning, match=r"(?s)allenai/OLMo-1B-hf.*branch list.*main"):
        cps = resolve_checkpoints("allenai/OLMo-1B-hf", "all")
    assert [c.revision for c in cps] == ["main"]


def test_paper_on_a_repo_with_only_main_is_an_error_online(monkeypatch):
    _online(monkeypatch, ["main"])
    with pytest.raises(ValueError, match=r"(?s)allenai/OLMo-2-1124-7B-SFT.*paper.*1 branch.*main"):
        resolve_checkpoints("allenai/OLMo-2-1124-7B-SFT", "paper")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the hub says 'main' is all there is: no warning
        assert [c.revision for c in resolve_checkpoints("allenai/OLMo-2-1124-7B-SFT", "all")] == ["main"]
    with pytest.raises(ValueError, match="selects no checkpoint"):
        select_revisions(["main"], "paper")


def test_pythia_offline_paper_is_unchanged():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cps = resolve_checkpoints("EleutherAI/pythia-160m", "paper", local_files_only=True)
    steps = [c.step for c in cps]
    assert steps == [0] + [2**i for i in range(3, 10)] + list(range(1000, 143001, 1000))
    assert len(cps) == 151 and len(resolve_checkpoints("EleutherAI/pythia-160m", local_files_only=True)) == 154
    assert {c.model for c in cps} == {"EleutherAI/pythia-160m"}


def test_cli_paper_selecting_nothing_fails(tmp_path, monkeypatch, capsys):
    from geomfast.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(ck, "_cached_revisions", lambda model_id: [])
    db = tmp_path / "r.db"
    rc = main(["trace", "--model", "allenai/OLMo-1B-hf", "--revisions", "paper", "--dataset", "synthetic",
               "--out", str(db)])
    err = capsys.readouterr().err
    assert rc == 1 and "allenai/OLMo-1B-hf" in err and "paper" in err and not db.exists()


def test_trace_passes_stage_starts_from_the_command_line(monkeypatch, capsys):
    """--stage-start 2=REVISION reaches resolve_checkpoints as stage_starts, checked before any
    work (a bad one is an error of the trace, not of its first checkpoint)."""
    from geomfast import cli, sweep

    args = cli.build_parser().parse_args(["trace", "--model", OLMO2, "--dataset", "synthetic", "--out", "r.db",
                                          "--stage-start", "2=stage1-step25000-tokens100B",
                                          "--stage-start", "3=9000"])
    starts = cli._stage_starts(args.stage_start)
    assert starts == {2: "stage1-step25000-tokens100B", 3: 9000}
    cfg = sweep.make_config(model=OLMO2, dataset="synthetic", out="r.db", stage_starts=starts)
    assert cfg.stage_starts == ((2, 25000, 100_000_000_000), (3, 9000, None))
    seen = {}

    def fake_resolve(model, revisions, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(ck, "resolve_checkpoints", fake_resolve)
    monkeypatch.setattr(sweep, "check_block_indices", lambda checkpoints, cfg: None)
    sweep.requested_checkpoints(cfg)
    assert seen["stage_starts"] == {2: (25000, 100_000_000_000), 3: (9000, None)}
    with pytest.raises(ValueError, match=r"stage_starts\[2\]: expected a revision name carrying a step"):
        sweep.make_config(model=OLMO2, dataset="synthetic", out="r.db", stage_starts={2: "main"})
    for bad, what in (("stage2", "expected K=REVISION"), ("1=step5", "a stage number >= 2"), ("2=main", "carrying a step")):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(["trace", "--model", OLMO2, "--dataset", "synthetic", "--out", "r.db",
                                           "--stage-start", bad])
        err = capsys.readouterr().err
        assert "--stage-start" in err and what in err, (bad, err)


@pytest.mark.parametrize("selector, needle", [
    ("", "got a blank one ''"),
    ("   ", "got a blank one '   '"),
    (",", "got ',', whose items 1, 2 (of 2) are empty"),
    ("step0,,", "got 'step0,,', whose items 2, 3 (of 3) are empty"),
    (",step0", "got ',step0', whose item 1 (of 2) is empty"),
])
def test_a_blank_selection_or_an_empty_list_item_is_refused(tmp_path, selector, needle):
    """' ' meant all, ',' kept nothing (a trace of 0 checkpoints, exit 0) and 'step0,,' ignored
    the gap: each is refused, naming the model and the selection, whatever the source (a list of
    revisions, a run folder, a hub id offline where names are otherwise trusted, a series)."""
    revs = pythia_revisions()
    with pytest.raises(ValueError, match=r"^\[select_revisions\] ") as e:
        select_revisions(revs, selector)
    assert needle in str(e.value)
    run = tmp_path / "run"
    for step in (0, 1):
        _write_model_folder(run / f"step{step}")
    for model in (str(run), "allenai/OLMo-1B-hf", "EleutherAI/pythia-160m", [str(run / "step0"), str(run / "step1")]):
        with pytest.raises(ValueError) as e:
            resolve_checkpoints(model, selector, local_files_only=True)
        msg = str(e.value)
        assert msg.startswith("[resolve_checkpoints] ") and f"--revisions {selector!r}: " in msg, msg
        assert needle in msg and (model if isinstance(model, str) else str(run / "step0")) in msg, msg
    assert resolve_checkpoints(str(run), "step1,0", local_files_only=True)[0].revision == "step0"  # still fine


def test_a_file_given_as_model_is_refused_as_a_file(tmp_path, monkeypatch):
    """It said 'no such folder' (a path with a separator), or went to the hub and failed at each
    load as 'the config file is not a valid JSON file' (a bare file name)."""
    f = tmp_path / "notes.txt"
    f.write_text("not a model\n")
    monkeypatch.chdir(tmp_path)
    run = _write_model_folder(tmp_path / "run" / "step0").parent
    for model in (str(f), "notes.txt", "./notes.txt", [str(run), "notes.txt"]):
        with pytest.raises(NotADirectoryError, match=r"model '[^']*notes\.txt' is a file, not a folder: expected a "
                                                     "model folder"):
            resolve_checkpoints(model, local_files_only=True)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        resolve_checkpoints(str(tmp_path / "missing"), local_files_only=True)
