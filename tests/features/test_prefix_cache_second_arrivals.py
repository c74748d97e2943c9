"""Second arrivals on hybrid models (paged/0063): the second request that shares a prefix with an
earlier one hits, though no prompt had left that prefix before. A recurrent state cannot be taken
back, so a request can start from cached blocks only where a state was kept at their end; before
0063 the first request on a system prompt kept none where the system prompt ends, and the second
computed it all again (gate-qwen35, two chats on a 280-token system prompt: cache_n 0, 0, 283).

A chat keeps states where its earlier messages end (the chat template's rendering of them): the
second user on a system prompt starts where the system message ends. A raw prompt keeps them on a sparse schedule
(256, 512, 1024, ... tokens; tests/features/test_prefix_cache.py checks it)."""

import pytest

from harness.answers import compare
from harness.prompts import gate_words
from test_prefix_cache import HYBRID_KNOBS, KNOB, serve
from verify import gate

pytestmark = pytest.mark.build

N_PREDICT = 12


def chat(srv, messages, slot):
    """A greedy chat completion pinned to a slot, its answer in /completion's shape for compare()."""
    body = {"messages": messages, "max_tokens": N_PREDICT, "temperature": 0, "seed": 1, "cache_prompt": True,
            "logprobs": True, "top_logprobs": 2, "id_slot": slot}
    out = srv.post("/v1/chat/completions", body)
    return {"content": out["choices"][0]["message"]["content"], "timings": out["timings"],
            "completion_probabilities": out["choices"][0]["logprobs"]["content"]}


def prompt_tokens(srv, messages):
    prompt = srv.post("/apply-template", {"messages": messages})["prompt"]
    return srv.post("/tokenize", {"content": prompt, "add_special": True, "parse_special": True})["tokens"]


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


SYSTEM = "You answer in the voice of a patient librarian. " + gate_words(220, 11)
QUESTIONS = ["What is the capital of France?", "Tell me a story about a dragon.", "How do tides work?"]


def conversation(question):
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.mark.parametrize("model", gate.HYBRID_GATE_MODELS)
def test_the_second_chat_on_a_system_prompt_reuses_it(model, tmp_path, report):
    """Two users on one system prompt, on different slots: the second starts where the system
    message ends (before 0063 it reused nothing), the third (the first's question again) all but
    its last token. The second answers as a cold server does."""
    with serve(model, HYBRID_KNOBS, tmp_path, "warm") as srv:
        first = chat(srv, conversation(QUESTIONS[0]), 0)
        second = chat(srv, conversation(QUESTIONS[1]), 1)
        third = chat(srv, conversation(QUESTIONS[0]), 1)
        shared = common_prefix(prompt_tokens(srv, conversation(QUESTIONS[0])), prompt_tokens(srv, conversation(QUESTIONS[1])))
        n_prompt = len(prompt_tokens(srv, conversation(QUESTIONS[0])))
        m = srv.metrics()
    assert first["timings"]["cache_n"] == 0
    reused = second["timings"]["cache_n"]
    # where the system message ends: the two prompts share it and the first tokens of the user turn
    assert shared - 8 <= reused <= shared, f"{model}: the second chat reused {reused} of the {shared} tokens it shares"
    assert third["timings"]["cache_n"] == n_prompt - 1, third["timings"]
    assert m["prefix_cache_states_taken_total"] >= 2, m
    with serve(model, {}, tmp_path, "cold") as srv:
        cold = chat(srv, conversation(QUESTIONS[1]), 1)
    assert cold["timings"]["cache_n"] == 0
    first_diff, diff = compare(model, cold, second)
    report(f"{KNOB}=1 LLAMA_KV_PAGED=1 {model} -np 2 -kvu: the second chat on a system prompt reused {reused} of the "
           f"{shared} prompt tokens it shares with the first ({n_prompt} in all; before paged/0063: 0); the same "
           f"chat again {third['timings']['cache_n']}; answer vs cold: first difference at token {first_diff}, "
           f"largest logprob difference {diff:.3g}")


def test_the_next_turn_of_a_chat_reuses_the_turn_before(tmp_path, report):
    """A conversation's next turn on another slot: what the turn before computed, its answer
    included, is reused (the state its request left at its end); the same turn with another last
    message reuses the history but at most the 64 tokens before that message."""
    model = "gate-qwen35"
    with serve(model, HYBRID_KNOBS, tmp_path, "warm") as srv:
        turn1 = chat(srv, conversation(QUESTIONS[0]), 0)
        history = conversation(QUESTIONS[0]) + [{"role": "assistant", "content": turn1["content"]}]
        turn2 = chat(srv, history + [{"role": "user", "content": QUESTIONS[2] + " " + gate_words(40, 5)}], 1)
        edited = chat(srv, history + [{"role": "user", "content": QUESTIONS[1] + " " + gate_words(40, 6)}], 0)
        n_history = common_prefix(prompt_tokens(srv, history + [{"role": "user", "content": QUESTIONS[2]}]),
                                  prompt_tokens(srv, history + [{"role": "user", "content": QUESTIONS[1]}]))
    assert turn2["timings"]["cache_n"] > len(SYSTEM.split()), turn2["timings"]
    # from the state nearest before where it leaves the turn: a message start within 64 tokens of
    # the state a prompt started from keeps none (each state is a sequence's recurrent memory)
    assert n_history - 64 <= edited["timings"]["cache_n"] <= n_history, (edited["timings"], n_history)
    report(f"{KNOB}=1 {model}: a chat's second turn reused {turn2['timings']['cache_n']} tokens; the same turn with "
           f"another last message {edited['timings']['cache_n']} of the {n_history} it shares")


def test_a_cycle_of_conversations_larger_than_the_bound_keeps_a_subset_hitting(tmp_path, report):
    """paged/0065: 16 conversations in turn over a bound of 8 states (each turn leaves two: before
    its prompt's last token and where it ended), 6 turns. Plain LRU dropped every state before its
    conversation came back, so no turn after the first reused anything; bimodal insertion keeps a
    stable subset hitting (here 1, 1, 2, 2 conversations on turns 3 to 6)."""
    from test_prefix_cache import ask, prompts, tokens_of

    model, n_conv, n_turns = "gate-qwen35", 16, 6
    with serve(model, {**HYBRID_KNOBS, "LLAMA_PREFIX_CACHE_STATES": "8"}, tmp_path, "warm") as srv:
        histories = prompts(srv, 0, n_tails=n_conv)
        histories = [h + tokens_of(srv, " " + gate_words(60, 400 + i)) for i, h in enumerate(histories)]
        hits = []
        for turn in range(n_turns):
            n_hit = 0
            for i in range(n_conv):
                out = ask(srv, histories[i], i % 2)
                n_hit += out["timings"]["cache_n"] > 0
                histories[i] = (histories[i] + [t["id"] for t in out["completion_probabilities"]] +
                                tokens_of(srv, " " + gate_words(8, 1000 * turn + i)))
            hits.append(n_hit)
        m = srv.metrics()
    report(f"{KNOB}=1 {model} LLAMA_PREFIX_CACHE_STATES=8 -np 2 -kvu: {n_conv} conversations in turn, "
           f"conversations that reused their history, turn by turn: {hits} (plain LRU: none after the first)")
    assert hits[0] == 0
    # from the third turn on some conversation hits every turn, and the stable subset grows
    assert all(h > 0 for h in hits[2:]) and sum(hits[2:]) >= 4, hits
    assert m["prefix_cache_states_bimodal"] == 1, m


def test_chats_on_different_system_prompts_do_not_wait_for_each_other(tmp_path, report):
    """paged/0066: every chat starts with the chat template's first tokens; a slot waited for
    another slot computing them (three tokens), so chats on different system prompts computed one
    after the other. A wait now starts only for a state's worth of tokens (64): two chats on
    different system prompts run together, two on the same one still wait and share it."""
    import threading

    model = "gate-qwen35"
    other_system = "You answer in the voice of a hurried sailor. " + gate_words(220, 12)
    pairs = {"different": [conversation(QUESTIONS[0]), [{"role": "system", "content": other_system},
                                                          {"role": "user", "content": QUESTIONS[1]}]],
             "same": [conversation(QUESTIONS[0]), conversation(QUESTIONS[1])]}
    waits = {}
    for name, chats in pairs.items():
        with serve(model, HYBRID_KNOBS, tmp_path, f"warm-{name}") as srv:
            out = [None, None]

            def run(i):
                out[i] = chat(srv, chats[i], i)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            waits[name] = srv.metrics()["prefix_cache_waits_total"]
            assert all(o is not None for o in out)
    report(f"{KNOB}=1 {model} -np 2 -kvu: two chats sent together wait {waits['different']:.0f} times on different "
           f"system prompts (before paged/0066 a chat waited for another's first 3 tokens, the chat template's), "
           f"{waits['same']:.0f} on the same one")
    assert waits["different"] == 0, waits
