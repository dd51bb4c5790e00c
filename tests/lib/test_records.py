import pytest

from codeplan_tools.core.records import MissingField, derive_id, derive_seed, normalize


def test_benchmark_rows_keep_answer_and_gain_prompt():
    r = normalize({"question": "2+2?", "answer": "4"})
    assert r["prompt"] == "2+2?" and r["answer"] == "4" and "response" not in r


def test_alpaca_rows_join_instruction_and_input():
    r = normalize({"instruction": "Translate", "input": "chat", "output": "cat"})
    assert r["prompt"] == "Translate\n\nchat" and r["response"] == "cat"
    assert normalize({"instruction": "Hi", "input": "", "output": "x"})["prompt"] == "Hi"


def test_chat_messages_give_last_user_turn_and_its_answer():
    r = normalize(
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    assert (r["prompt"], r["response"]) == ("q", "a")


def test_named_fields_and_dotted_paths():
    r = normalize({"data": {"q": "hello"}, "out": "world"}, prompt_field="data.q", response_field="out")
    assert (r["prompt"], r["response"]) == ("hello", "world")


def test_missing_required_field_names_the_flag():
    with pytest.raises(MissingField, match="--prompt-field"):
        normalize({"text": "x"}, require=("prompt",))


def test_ids_are_kept_or_derived_stably():
    assert normalize({"id": 7, "prompt": "x"})["id"] == "7"
    a = normalize({"prompt": "x", "response": "y", "extra": 1})["id"]
    b = normalize({"response": "y", "prompt": "x", "other": 2})["id"]
    assert a == b and a != normalize({"prompt": "x", "response": "z"})["id"]
    assert derive_id({"prompt": "x"}) == derive_id({"prompt": "x"})


def test_unknown_fields_pass_through():
    r = normalize({"prompt": "x", "weird": {"a": [1]}})
    assert r["weird"] == {"a": [1]}


def test_seeds_depend_on_global_seed_and_id_only():
    assert derive_seed(1, "a") == derive_seed(1, "a")
    assert len({derive_seed(1, "a"), derive_seed(2, "a"), derive_seed(1, "b")}) == 3
