"""Generated container names in docker's style: ``adjective_scientist``."""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "admiring", "agitated", "amazing", "bold", "brave", "busy", "clever", "cool", "dazzling",
    "eager", "elastic", "festive", "focused", "friendly", "gallant", "gifted", "happy", "jolly",
    "keen", "kind", "laughing", "lucid", "modest", "nifty", "optimistic", "peaceful", "quirky",
    "relaxed", "serene", "sharp", "stoic", "sweet", "tender", "trusting", "upbeat", "vibrant",
    "wizardly", "youthful", "zealous", "zen",
)
SURNAMES = (
    "agnesi", "babbage", "bohr", "curie", "darwin", "dijkstra", "einstein", "euler", "fermi",
    "feynman", "galileo", "gauss", "goldberg", "hamilton", "hopper", "hypatia", "johnson",
    "kepler", "knuth", "lamarr", "lovelace", "maxwell", "meitner", "newton", "noether",
    "pascal", "perlman", "ritchie", "shannon", "tesla", "thompson", "torvalds", "turing",
    "wilson", "wozniak", "yalow",
)


def generate_name() -> str:
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(SURNAMES)}"
