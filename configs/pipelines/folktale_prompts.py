"""Prompt builders of the folktale pipeline (configs/pipelines/folktale.yaml): the code that serves a step's model
imports the same function, so it is asked exactly as it was trained. Each takes one annotated record (a dict, as
configs/pipelines/folktale/annotated.jsonl holds it) and returns the user message."""
from __future__ import annotations


def build_relationship_prompt(record: dict) -> str:
    """The scene and its characters (the character step's answer, at serving time): how are they related?"""
    characters = record["annotations"]["characters"]
    names = list(dict.fromkeys([*characters["doers"], *characters["receivers"]]))
    return f"Scene: {record['text']}\nCharacters: {', '.join(names)}\nHow are the characters related?"


def build_event_prompt(record: dict) -> str:
    """The scene alone, with its language: what kind of action and which Propp function?"""
    language = {"zh": "Chinese", "vi": "Vietnamese"}[record["lang"]]
    return f"Scene of a {language} folktale: {record['text']}\nClassify its action and event."
