"""The task registry and the adapters from public file formats (checked against the converted rows)."""

import csv
import gzip
import json

import orjson
import pytest

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.streams import read_records
from codeplan_tools.eval.tasks import (
    Task,
    expand_task_names,
    field_subtasks,
    get_task,
    list_tasks,
    prepare_records,
    read_rows,
    register_task,
    resolve_task,
)
from codeplan_tools.eval.tasks.benchmarks import BBH_TASKS
from codeplan_tools.stages.score import ScoreConfig, score_records

BENCHMARKS = (
    "gsm8k math math500 svamp multiarith addsub singleeq aqua commonsenseqa strategyqa date_understanding "
    "shuffled_objects coin_flip last_letters ifeval hotpotqa musique 2wikimultihopqa bamboogle"
).split()


def test_every_benchmark_is_registered_with_its_scorer():
    names = {t.name for t in list_tasks()}
    assert set(BENCHMARKS) <= names
    assert len(BBH_TASKS) == 27 and {f"bbh/{b}" for b in BBH_TASKS} <= names
    scorers = {n: get_task(n).scorer for n in BENCHMARKS}
    assert scorers["gsm8k"] == "numeric" and scorers["math500"] == "math" and scorers["aqua"] == "choice"
    assert scorers["strategyqa"] == "yesno" and scorers["musique"] == "qa" and scorers["ifeval"] == "ifeval"
    assert get_task("bbh/boolean_expressions").scorer_options["labels"] == ("True", "False")
    assert get_task("bbh/object_counting").scorer == "numeric"
    assert get_task("math-500").name == "math500" and get_task("csqa").name == "commonsenseqa"
    assert all(get_task(n).instruction for n in BENCHMARKS if n != "ifeval")


@pytest.mark.parametrize(
    "record, forced, name",
    [
        ({"task": "gsm8k"}, None, "gsm8k"),
        # The shared BBH rows say task "date_understanding": their id/source make it BBH's, not Kojima's.
        ({"id": "bbh-date_understanding-003", "task": "date_understanding"}, None, "bbh/date_understanding"),
        ({"id": "date-0001", "task": "date_understanding"}, None, "date_understanding"),
        ({"id": "bbh-navigate-001"}, "bbh", "bbh/navigate"),
        ({"task": "word_sorting"}, None, "bbh/word_sorting"),  # a unique member name
        ({"task": "other"}, "gsm8k", "gsm8k"),
    ],
    ids=["own task", "bbh row", "kojima row", "forced group", "member name", "forced"],
)
def test_resolve_task_forms(record, forced, name):
    assert resolve_task(record, forced=forced).name == name


@pytest.mark.parametrize(
    "record, forced, message",
    [
        ({"task": "nope"}, None, "unknown task 'nope'"),
        ({"id": "x"}, None, "record has no 'task' field"),
        ({"id": "x"}, "bbh", "which bbh task"),
    ],
    ids=["unknown", "no task", "group without member"],
)
def test_resolve_task_errors_name_the_problem(record, forced, message):
    with pytest.raises(UsageError, match=message) as caught:
        resolve_task(record, forced=forced)
    if forced is None and "task" not in record:
        assert "--task" in str(caught.value)


def test_expand_task_names_groups():
    tasks = expand_task_names("gsm8k,bbh,gsm8k")
    assert tasks[0].name == "gsm8k" and len(tasks) == 28
    with pytest.raises(UsageError):
        expand_task_names("gsm8k,nope")


def test_another_module_registers_a_task_and_it_is_scored():
    register_task(
        Task(
            name="synth/test_upper",
            scorer="exact",
            scorer_options={"normalize": "compact"},
            subtasks=field_subtasks("difficulty"),
            difficulty="difficulty",
            group="synth-test",
        ),
        replace=True,
    )
    with pytest.raises(ValueError, match="already registered"):
        register_task(Task(name="synth/test_upper", scorer="numeric"))
    records = [
        {
            "id": "a",
            "task": "synth/test_upper",
            "answer": "abc",
            "difficulty": 3,
            "response": "The answer is a b c.",
        },
        {
            "id": "b",
            "task": "synth/test_upper",
            "answer": "abd",
            "difficulty": 4,
            "response": "The answer is abc.",
        },
    ]
    out = list(score_records(records, ScoreConfig()))
    assert [r["meta"]["score"]["correct"] for r in out] == [True, False]
    assert out[0]["meta"]["score"]["subtasks"] == {"difficulty": "3"}
    assert out[0]["meta"]["score"]["difficulty"] == "difficulty"


def test_read_rows_layouts(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"q": 1}, {"q": 2}]))
    (tmp_path / "b.json").write_text(json.dumps({"examples": [{"input": "x", "target": "y"}]}))
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(b'{"q": 1}\n{"q": 2}\n'))
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["Question", "Answer"], ["Who?", "me"]])
    assert [r["q"] for r in read_rows(tmp_path / "a.json")] == [1, 2]
    assert list(read_rows(tmp_path / "b.json")) == [{"input": "x", "target": "y"}]
    assert [r["q"] for r in read_rows(tmp_path / "c.jsonl.gz")] == [1, 2]
    assert list(read_rows(tmp_path / "d.csv")) == [{"Question": "Who?", "Answer": "me"}]


def test_prepare_appends_instruction_and_limits(shared_data):
    recs = list(prepare_records(get_task("gsm8k"), shared_data, limit=3))
    assert [r["id"] for r in recs] == ["gsm8k-test-00000", "gsm8k-test-00001", "gsm8k-test-00002"]
    r = recs[0]
    assert r["task"] == "gsm8k" and r["prompt"] == r["question"] + "\n\n" + get_task("gsm8k").instruction
    assert "response" not in r and r["answer"] == "18" and "####" in r["solution"]
    bare = next(
        prepare_records(get_task("gsm8k"), shared_data, limit=1, instruction=False, gold_response=True)
    )
    assert bare["prompt"] == bare["question"] and bare["response"] == bare["solution"]
    bbh = list(prepare_records(get_task("bbh/navigate"), shared_data))
    assert len(bbh) == 250 and all(x["task"] == "bbh/navigate" for x in bbh)
    with pytest.raises(UsageError, match="missing"):
        list(prepare_records(get_task("gsm8k"), shared_data / "nowhere"))


def test_musique_hops_and_math_levels_are_subtasks(shared_data):
    musique = list(prepare_records(get_task("musique"), shared_data))
    hops = {get_task("musique").subtask_values(r)["hops"] for r in musique}
    assert hops == {"2", "3", "4"}
    math = next(prepare_records(get_task("math"), shared_data, limit=1))
    assert get_task("math").subtask_values(math) == {"subject": "Algebra", "level": "3"}


# ---------------------------------------------------------------------------------------------
# Public formats: rebuild the rows people download from the converted files' extra fields and check
# that the adapters give back the same records.


def _rows(shared_data, rel):
    return list(read_records([str(shared_data / rel)]))


def _adapt(task_name, public_rows, path):
    task = get_task(task_name)
    return list(task.adapter(iter(public_rows), path))


def _same(converted, adapted, keys=("id", "question", "answer")):
    assert len(converted) == len(adapted)
    for c, a in zip(converted, adapted, strict=True):
        for k in keys:
            assert a[k] == c[k], (k, c["id"])


def test_gsm8k_public_format(shared_data):
    rows = _rows(shared_data, "gsm8k/test.jsonl.zst")
    public = [{"question": r["question"], "answer": r["solution"]} for r in rows]
    _same(
        rows,
        _adapt("gsm8k", public, "grade_school_math/data/test.jsonl"),
        ("id", "question", "answer", "answer_raw"),
    )


def test_math_public_formats(shared_data):
    rows = _rows(shared_data, "math/test.jsonl.zst")[:200]
    for r in rows:  # one MATH JSON file per problem; the path gives the id
        public = {
            "problem": r["question"],
            "solution": r["solution"],
            "level": r["level"],
            "type": r["subject"],
        }
        (out,) = _adapt("math", [public], "MATH/" + r["unique_id"])
        assert (out["id"], out["question"], out["answer"], out["unique_id"]) == (
            r["id"],
            r["question"],
            r["answer"].strip(),  # the converted file keeps the spaces inside \boxed{ }
            r["unique_id"],
        )
    rows500 = _rows(shared_data, "math500/test.jsonl.zst")
    public500 = [
        {k: r[k] for k in ("solution", "answer", "subject", "level", "unique_id")}
        | {"problem": r["question"]}
        for r in rows500
    ]
    _same(rows500, _adapt("math500", public500, "prm800k/math_splits/test.jsonl"))


def test_kojima_style_public_formats(shared_data):
    svamp = _rows(shared_data, "svamp/test.jsonl.zst")
    public = [
        {"ID": r["orig_id"], "Body": r["body"], "Question": r["question_only"], "Answer": float(r["answer"])}
        for r in svamp
    ]
    _same(svamp, _adapt("svamp", public, "SVAMP.json"))
    for name, path in (
        ("multiarith", "MultiArith.json"),
        ("addsub", "AddSub.json"),
        ("singleeq", "questions.json"),
    ):
        rows = _rows(shared_data, f"{name}/test.jsonl.zst")
        public = [
            {
                "iIndex": int(r["id"].split("-")[1]),
                "sQuestion": r["question"],
                "lSolutions": [float(r["answer"])],
            }
            for r in rows
        ]
        _same(rows, _adapt(name, public, path))
    aqua = _rows(shared_data, "aqua/test.jsonl.zst")
    public = [{"question": r["stem"], "options": r["options_raw"], "correct": r["answer"]} for r in aqua]
    _same(aqua, _adapt("aqua", public, "AQuA/test.json"))
    csqa = _rows(shared_data, "commonsenseqa/dev.jsonl.zst")
    public = [
        {
            "id": r["id"][5:],
            "question": {"stem": r["stem"], "choices": r["choices"]},
            "answerKey": r["answer"],
        }
        for r in csqa
    ]
    _same(csqa, _adapt("commonsenseqa", public, "dev_rand_split.jsonl"))
    sqa = _rows(shared_data, "strategyqa/test.jsonl.zst")
    public = [
        {
            "input": r["question"],
            "target_scores": {"Yes": int(r["answer"] == "yes"), "No": int(r["answer"] == "no")},
        }
        for r in sqa
    ]
    _same(sqa, _adapt("strategyqa", public, "task.json"))
    for name in ("coin_flip", "last_letters"):
        rows = _rows(shared_data, f"{name}/test.jsonl.zst")
        public = [{"question": r["question"], "answer": r["answer"]} for r in rows]
        _same(rows, _adapt(name, public, f"{name}.json"))


def test_bigbench_choice_shuffle_reproduces_kojima(shared_data):
    # The raw BIG-bench files list the right date first; Kojima's reader shuffles with random.seed(1).
    date = _rows(shared_data, "date_understanding/test.jsonl.zst")
    public = [{"input": r["stem"], "target_scores": r["target_scores"]} for r in date]
    assert sum(next(iter(p["target_scores"].values())) == 1 for p in public) > 360
    _same(date, _adapt("date_understanding", public, "Bigbench_Date/task.json"))
    objs = _rows(shared_data, "shuffled_objects/test.jsonl.zst")
    public = [
        {
            "input": r["stem"],
            "target_scores": {c["text"]: int(c["label"] == r["answer"]) for c in r["choices"]},
        }
        for r in objs
    ]
    _same(objs, _adapt("shuffled_objects", public, "Bigbench_object_tracking/task.json"))


def test_bbh_public_task_file(shared_data, tmp_path):
    rows = [r for r in _rows(shared_data, "bbh/test.jsonl.zst") if r["task"] == "web_of_lies"]
    path = tmp_path / "web_of_lies.json"
    path.write_bytes(
        orjson.dumps({"examples": [{"input": r["question"], "target": r["answer"]} for r in rows]})
    )
    recs = list(prepare_records(get_task("bbh/web_of_lies"), files=[path]))
    _same(rows, recs)
    assert all(r["task"] == "bbh/web_of_lies" for r in recs)


def test_qa_and_ifeval_public_formats(shared_data, tmp_path):
    mus = _rows(shared_data, "musique/dev.jsonl.zst")[:300]
    public = [
        {k: r[k] for k in ("question", "answer", "answer_aliases", "answerable")} | {"id": r["orig_id"]}
        for r in mus
    ]
    _same(mus, _adapt("musique", public, "musique_ans_v1.0_dev.jsonl"))
    bam = _rows(shared_data, "bamboogle/test.jsonl.zst")
    path = tmp_path / "test.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Question", "Answer"])
        w.writerows([r["question"], r["answer"]] for r in bam)
    _same(bam, list(prepare_records(get_task("bamboogle"), files=[path])))
    ife = _rows(shared_data, "ifeval/test.jsonl.zst")
    public = [{k: r[k] for k in ("key", "prompt", "instruction_id_list", "kwargs")} for r in ife]
    _same(
        ife, _adapt("ifeval", public, "input_data.jsonl"), ("id", "question", "answer", "instruction_id_list")
    )
