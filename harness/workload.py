"""Workload files (bench/workloads/*.json): strict validation and expansion into
a request plan. Every key is documented in docs/BENCHMARKS.md; an unknown or
mistyped key is an error, because a typo silently ignored would change what is
measured without anyone noticing.
"""
import json
import pathlib
import random
import sys

from . import prompts
from .errors import HarnessError

# Keys that shape requests: allowed at top level (defaults) and in each wave.
REQUEST_KEYS = {"n_requests", "arrival", "prompt_tokens", "shared_prefix_tokens",
                "shared_prefix_fraction", "n_shared_prefixes", "n_predict"}
TOP_KEYS = REQUEST_KEYS | {"name", "description", "n_slots", "ctx", "seed", "ignore_eos", "chat",
                           "server_args", "request_timeout_s", "waves"}
WAVE_KEYS = REQUEST_KEYS | {"name", "start_s", "reuse_prompts_from_wave", "continue_from_wave"}
ARRIVAL_KEYS = {"all_at_once": {"type"}, "staggered": {"type", "interval_s"},
                "poisson": {"type", "rate", "seed"}}
REQUIRED_PER_WAVE = ("n_requests", "prompt_tokens", "n_predict")


def _fail(where, msg):
    raise HarnessError(f"workload {where}: {msg}")


def _check_keys(where, obj, allowed):
    if not isinstance(obj, dict):
        _fail(where, f"must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                     f"allowed: {', '.join(sorted(allowed))}")


def _int(where, key, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(where, f"'{key}' must be an integer >= {minimum}, got {value!r}")
    return value


def _number(where, key, value, minimum, maximum=None, strict_min=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > minimum if strict_min else value >= minimum)
    ok = ok and (maximum is None or value <= maximum)
    if not ok:
        bound = f"> {minimum}" if strict_min else f">= {minimum}"
        bound += f" and <= {maximum}" if maximum is not None else ""
        _fail(where, f"'{key}' must be a number {bound}, got {value!r}")
    return float(value)


def _arrival(where, value):
    if value == "all_at_once":  # shorthand
        value = {"type": "all_at_once"}
    if not isinstance(value, dict) or value.get("type") not in ARRIVAL_KEYS:
        _fail(where, f"'arrival' must be \"all_at_once\" or an object with type "
                     f"{' | '.join(ARRIVAL_KEYS)}, got {value!r}")
    kind = value["type"]
    _check_keys(f"{where} arrival", value, ARRIVAL_KEYS[kind])
    for key in ARRIVAL_KEYS[kind] - {"type"}:
        if key not in value:
            _fail(where, f"arrival type '{kind}' needs '{key}'")
    if kind == "staggered":
        _number(where, "interval_s", value["interval_s"], 0)
    if kind == "poisson":
        _number(where, "rate", value["rate"], 0, strict_min=True)
        _int(where, "seed", value["seed"], 0)
    return value


def _prompt_tokens(where, value):
    if isinstance(value, list):
        if not value:
            _fail(where, "'prompt_tokens' list is empty")
        for item in value:
            _int(where, "prompt_tokens[]", item, 1)
    elif isinstance(value, dict):
        _check_keys(f"{where} prompt_tokens", value, {"min", "max"})
        if "min" not in value or "max" not in value:
            _fail(where, "'prompt_tokens' range needs 'min' and 'max'")
        if _int(where, "prompt_tokens.min", value["min"], 1) > _int(where, "prompt_tokens.max", value["max"], 1):
            _fail(where, "'prompt_tokens' range has min > max")
    else:
        _int(where, "prompt_tokens", value, 1)
    return value


def _check_request_keys(where, obj):
    if "n_requests" in obj:
        _int(where, "n_requests", obj["n_requests"], 1)
    if "n_predict" in obj:
        _int(where, "n_predict", obj["n_predict"], 1)
    if "arrival" in obj:
        _arrival(where, obj["arrival"])
    if "prompt_tokens" in obj:
        _prompt_tokens(where, obj["prompt_tokens"])
    if "shared_prefix_tokens" in obj:
        _int(where, "shared_prefix_tokens", obj["shared_prefix_tokens"], 0)
    if "n_shared_prefixes" in obj:
        _int(where, "n_shared_prefixes", obj["n_shared_prefixes"], 1)
    if "shared_prefix_fraction" in obj:
        _number(where, "shared_prefix_fraction", obj["shared_prefix_fraction"], 0, 1)


def validate(data, where="workload"):
    """Returns a normalized copy: top-level defaults folded into each wave."""
    _check_keys(where, data, TOP_KEYS)
    for key in ("n_slots", "ctx"):
        if key not in data:
            _fail(where, f"missing required key '{key}'")
        _int(where, key, data[key], 1)
    _int(where, "seed", data.get("seed", 0), 0)
    if not isinstance(data.get("ignore_eos", True), bool):
        _fail(where, "'ignore_eos' must be true or false")
    if not isinstance(data.get("chat", False), bool):
        _fail(where, "'chat' must be true or false")
    server_args = data.get("server_args", [])
    if not isinstance(server_args, list) or not all(isinstance(a, (str, int, float)) for a in server_args):
        _fail(where, "'server_args' must be a list of strings")
    _number(where, "request_timeout_s", data.get("request_timeout_s", 900), 0, strict_min=True)
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            _fail(where, f"'{key}' must be a string")
    _check_request_keys(where, data)

    raw_waves = data.get("waves", [{}])
    if not isinstance(raw_waves, list) or not raw_waves:
        _fail(where, "'waves' must be a non-empty list of objects")
    defaults = {k: data[k] for k in REQUEST_KEYS if k in data}
    waves = []
    for i, raw in enumerate(raw_waves):
        wwhere = f"{where} waves[{i}]"
        _check_keys(wwhere, raw, WAVE_KEYS)
        _check_request_keys(wwhere, raw)
        wave = dict(defaults, **raw)
        wave.setdefault("name", f"wave{i}")
        wave.setdefault("arrival", {"type": "all_at_once"})
        wave["arrival"] = _arrival(wwhere, wave["arrival"])
        wave.setdefault("shared_prefix_tokens", 0)
        wave.setdefault("shared_prefix_fraction", 1.0)
        wave.setdefault("n_shared_prefixes", 1)
        if "start_s" in raw:
            _number(wwhere, "start_s", raw["start_s"], 0)
        if "reuse_prompts_from_wave" in raw:
            src = raw["reuse_prompts_from_wave"]
            if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < i:
                _fail(wwhere, f"'reuse_prompts_from_wave' must be the index of an earlier wave, got {src!r}")
            clash = sorted({"prompt_tokens", "shared_prefix_tokens", "shared_prefix_fraction", "n_shared_prefixes"} & set(raw))
            if clash:
                _fail(wwhere, f"{', '.join(clash)} cannot be combined with 'reuse_prompts_from_wave' "
                              "(the prompts are the earlier wave's)")
            wave.setdefault("prompt_tokens", 1)  # unused: prompts are copied
        if "continue_from_wave" in raw:
            src = raw["continue_from_wave"]
            if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < i:
                _fail(wwhere, f"'continue_from_wave' must be the index of an earlier wave, got {src!r}")
            clash = sorted({"reuse_prompts_from_wave", "shared_prefix_tokens", "shared_prefix_fraction", "n_shared_prefixes",
                            "start_s"} & set(raw))
            if clash:
                _fail(wwhere, f"{', '.join(clash)} cannot be combined with 'continue_from_wave' (a next turn starts "
                              "with the earlier turn's prompt and answer, once that turn has ended)")
            wave["shared_prefix_tokens"] = 0  # the conversation so far is the shared part
        for key in REQUIRED_PER_WAVE:
            if key not in wave:
                _fail(wwhere, f"missing '{key}' (set it in the wave or at the top level)")
        waves.append(wave)

    out = {k: v for k, v in data.items() if k not in REQUEST_KEYS and k != "waves"}
    out.setdefault("seed", 0)
    out.setdefault("ignore_eos", True)
    out.setdefault("chat", False)
    out.setdefault("server_args", [])
    out.setdefault("request_timeout_s", 900)
    out["waves"] = waves
    return out


def load(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise HarnessError(f"workload file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise HarnessError(f"workload {path}: not valid JSON: {err}") from None
    workload = validate(data, where=str(path))
    workload.setdefault("name", path.stem)
    return workload


def _tail_lengths(wave, seed, wave_index):
    spec, n = wave["prompt_tokens"], wave["n_requests"]
    if isinstance(spec, list):
        return [spec[i % len(spec)] for i in range(n)]
    if isinstance(spec, dict):
        rng = random.Random(f"{seed}:lengths:{wave_index}")
        return [rng.randint(spec["min"], spec["max"]) for _ in range(n)]
    return [spec] * n


def _has_prefix(index, fraction):
    # Spreads the prefixed requests evenly over the wave (fraction 0.5: every other one).
    return int((index + 1) * fraction) > int(index * fraction)


def _offsets(arrival, n, wave_index):
    if arrival["type"] == "staggered":
        return [i * arrival["interval_s"] for i in range(n)]
    if arrival["type"] == "poisson":
        rng = random.Random(f"{arrival['seed']}:arrivals:{wave_index}")
        t, out = 0.0, []
        for _ in range(n):
            out.append(t)
            t += rng.expovariate(arrival["rate"])
        return out
    return [0.0] * n


def plan(workload):
    """The concrete requests, wave by wave: [{'name', 'start_s', 'requests': [...]}]
    where each request has id, wave, offset_s (from the wave's start), prompt,
    system, n_predict, has_prefix and approx_tokens. A chat workload sends system (the
    shared prefix, if any) as the system message and prompt as the user message; otherwise
    prompt is the whole text and system the part of it that is shared."""
    seed = workload["seed"]
    waves_out = []
    for wi, wave in enumerate(workload["waves"]):
        offsets = _offsets(wave["arrival"], wave["n_requests"], wi)
        requests = []
        if "continue_from_wave" in wave:
            # a chat's next turn: the earlier turn's prompt and answer (known when it ended, see
            # loadrun.execute) and a new message of prompt_tokens
            source = waves_out[wave["continue_from_wave"]]["requests"]
            for i, tail_len in enumerate(_tail_lengths(wave, seed, wi)):
                src = source[i % len(source)]
                requests.append({"id": f"w{wi}r{i}", "wave": wi, "offset_s": offsets[i],
                                 "prompt": prompts.unique_prompt(seed, wi, i, tail_len), "system": "", "continues": src["id"],
                                 "n_predict": wave["n_predict"], "has_prefix": True,
                                 "approx_tokens": src["approx_tokens"] + src["n_predict"] + tail_len})
            waves_out.append({"name": wave["name"], "start_s": None, "requests": requests})
            continue
        if "reuse_prompts_from_wave" in wave:
            source = waves_out[wave["reuse_prompts_from_wave"]]["requests"]
            shapes = [(source[i % len(source)]["prompt"], source[i % len(source)]["system"],
                       source[i % len(source)]["has_prefix"], source[i % len(source)]["approx_tokens"])
                      for i in range(wave["n_requests"])]
        else:
            # prefix k > 0 has a seed of its own; the first is the one workloads always had
            prefixes = [prompts.shared_prefix(seed if k == 0 else f"{seed}:{k}", wave["shared_prefix_tokens"])
                        for k in range(wave["n_shared_prefixes"])]
            shapes = []
            for i, tail_len in enumerate(_tail_lengths(wave, seed, wi)):
                tail = prompts.unique_prompt(seed, wi, i, tail_len)
                prefix = prefixes[i % len(prefixes)]
                with_prefix = bool(prefix) and _has_prefix(i, wave["shared_prefix_fraction"])
                # a chat sends the prefix as its system message and the tail as its user message
                text = tail if workload["chat"] or not with_prefix else f"{prefix} {tail}"
                approx = tail_len + (wave["shared_prefix_tokens"] if with_prefix else 0)
                shapes.append((text, prefix if with_prefix else "", with_prefix, approx))
        for i, (text, system, with_prefix, approx) in enumerate(shapes):
            requests.append({"id": f"w{wi}r{i}", "wave": wi, "offset_s": offsets[i], "prompt": text,
                             "system": system, "n_predict": wave["n_predict"], "has_prefix": with_prefix,
                             "approx_tokens": approx})
        waves_out.append({"name": wave["name"], "start_s": wave.get("start_s"), "requests": requests})
    return waves_out


def warn_if_too_long(workload, waves):
    """Token counts are approximate, so an over-long prompt is a warning here;
    the server rejects it per request, and the report shows that as an error."""
    per_slot = workload["ctx"] // workload["n_slots"]
    longest = max(r["approx_tokens"] + r["n_predict"] for w in waves for r in w["requests"])
    if longest > per_slot:
        print(f"warning: workload {workload['name']}: longest request is ~{longest} tokens "
              f"(prompt + n_predict) but each of the {workload['n_slots']} slots has "
              f"{per_slot} (ctx/n_slots)", file=sys.stderr)
