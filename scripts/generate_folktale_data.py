#!/usr/bin/env python3
"""Generate the bundled annotated folktale set of the per-step pipeline example (configs/pipelines/folktale.yaml).

Run from the repository root::

    python scripts/generate_folktale_data.py [--out-dir DIR]

It writes, under ``DIR`` (default: the repository root)::

    configs/pipelines/folktale/annotated.jsonl          120 annotated scenes of 40 tales (3 scenes each)
    configs/pipelines/folktale/<step>.schema.json       the answer schema of each step (character, relationship, event)

Each record is one scene of a tale with Chinese or Vietnamese names: ``tale_id`` (the group key: a tale's scenes
never cross splits), ``scene``, ``lang``, ``text`` and ``annotations`` (characters: doers and receivers;
relationships; action_category; event_type, a Propp function). Stdlib only and deterministic (one seeded
``random.Random``); re-running produces byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SEED = 2026
N_TALES = 40
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"

ZH_NAMES = ["Niulang (牛郎)", "Zhinü (织女)", "Li Ming", "Wang Lan", "Zhang Wei", "Chen Jing", "Liu Bei", "Mulan (木兰)",
            "Xiao Hong", "Zhao Yun"]
VI_NAMES = ["Tấm", "Cám", "Thạch Sanh", "Lý Thông", "Sọ Dừa", "Chử Đồng Tử", "Thánh Gióng", "Mai An Tiêm",
            "Trần Thị Mai", "Nguyễn Văn An"]
# relation -> how the scene says it (A is the first character, B the second)
RELATIONS = {"siblings": "{a} and {b} were brother and sister", "spouses": "{a} was married to {b}",
             "parent_child": "{a} was the parent of {b}", "master_servant": "{a} was the master of {b}",
             "friends": "{a} and {b} had been friends since childhood", "rivals": "{a} and {b} were bitter rivals"}
# action category -> (verb phrase A does to B, Propp event types it fits)
ACTIONS = {
    "help": ("{a} helped {b} carry the rice to the village", ["donor_test", "receipt_of_agent"]),
    "deceive": ("{a} tricked {b} with a false promise", ["trickery", "villainy"]),
    "fight": ("{a} fought {b} at the old bridge", ["struggle", "victory"]),
    "travel": ("{a} set out with {b} across the mountains", ["departure", "return"]),
    "reward": ("{a} gave {b} a golden fish as a reward", ["wedding", "receipt_of_agent"]),
    "punish": ("{a} banished {b} from the kingdom", ["punishment", "victory"]),
}
PLACES = {"zh": ["by the Yellow River", "in a village near Hangzhou", "under the Milky Way", "in the palace of Chang'an"],
          "vi": ["by the Red River", "in a village near Hội An", "under the banyan tree", "in the citadel of Huế"]}
EVENT_TYPES = sorted({e for _, events in ACTIONS.values() for e in events})


def scene(rng: random.Random, lang: str, cast: list[str], relation: str) -> tuple[str, dict]:
    a, b = rng.sample(cast[:2], 2) if rng.random() < 0.5 else cast[:2]
    action = rng.choice(sorted(ACTIONS))
    phrase, events = ACTIONS[action]
    event = rng.choice(events)
    onlooker = cast[2] if rng.random() < 0.5 else None
    text = (f"Long ago, {rng.choice(PLACES[lang])}, {RELATIONS[relation].format(a=cast[0], b=cast[1])}. "
            f"One day {phrase.format(a=a, b=b)}.")
    if onlooker:
        text += f" {onlooker} watched from afar and said nothing."
    annotations = {"characters": {"doers": [a], "receivers": [b]},
                   "relationships": [{"a": cast[0], "b": cast[1], "relation": relation}],
                   "action_category": action, "event_type": event}
    return text, annotations


def records() -> list[dict]:
    rng = random.Random(SEED)
    out = []
    for t in range(N_TALES):
        lang = "zh" if t % 2 == 0 else "vi"
        cast = rng.sample(ZH_NAMES if lang == "zh" else VI_NAMES, 3)
        relation = rng.choice(sorted(RELATIONS))
        for s in range(3):
            text, annotations = scene(rng, lang, cast, relation)
            out.append({"tale_id": f"tale-{t:03d}", "scene": s + 1, "lang": lang, "text": text,
                        "annotations": annotations})
    return out


def schemas() -> dict[str, dict]:
    def obj(properties: dict) -> dict:
        return {"$schema": SCHEMA_URI, "type": "object", "properties": properties,
                "required": list(properties), "additionalProperties": False}

    names = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
    relation = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"},
                                                 "relation": {"enum": sorted(RELATIONS)}},
                "required": ["a", "b", "relation"], "additionalProperties": False}
    return {"character": obj({"doers": names, "receivers": names}),
            "relationship": obj({"relationships": {"type": "array", "items": relation, "minItems": 1}}),
            "event": obj({"action_category": {"enum": sorted(ACTIONS)}, "event_type": {"enum": EVENT_TYPES}})}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    folder = args.out_dir / "configs" / "pipelines" / "folktale"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in records()]
    (folder / "annotated.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for step, schema in schemas().items():
        (folder / f"{step}.schema.json").write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n",
                                                    encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
