"""``arith``: GSM8K-style word problems with 1-3 arithmetic steps on small numbers, generated from a seed.

The laptop study's task: a small model can learn it within minutes on a CPU, so its accuracy can move, and it
needs nothing outside the repository. Each problem is a short story about one person and one kind of object,
one operation per sentence, with a worked solution in GSM8K's own format (one line per step, ``#### <number>``
last), so the prompt, the ``<think>/<answer>`` format, the rewards, the SFT examples and the evaluation are
exactly GSM8K's (this class is GSM8K with another data source)::

    Mia has 7 marbles. She finds 5 more marbles. Then she gives away 3 marbles. How many marbles does Mia have now?

    Mia starts with 7 marbles.
    After finding 5 more she has 7 + 5 = 12 marbles.
    After giving away 3 she has 12 - 3 = 9 marbles.
    #### 9

``data.options`` (:class:`ArithOptions`) sets the sizes and the difficulty: number of steps, largest operand,
operations (``+``, ``-``, ``*``). Generation is deterministic from ``seed``: one random stream, duplicates
skipped, the first ``test_size`` distinct problems are the test split and the next ``train_size`` the training
split, so the two never share a question. A subtraction never goes below zero; a multiplication multiplies by
2 to 5 (at most ``max_operand``).

Simplified: one person and one kind of object per problem, no distractor sentences, integers only.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass, field

from orchestrator.core.errors import ConfigError
from workers.tasks.gsm8k import GSM8K
from workers.tasks.registry import register_task

# Bump when the problems for the same options change (cached models and warm starts are keyed by it).
GENERATOR_VERSION = 1
OPERATIONS = ("+", "-", "*")
NAMES = (("Mia", "She"), ("Tom", "He"), ("Ana", "She"), ("Ben", "He"), ("Zoe", "She"), ("Sam", "He"),
         ("Lea", "She"), ("Max", "He"), ("Ivy", "She"), ("Leo", "He"), ("Eva", "She"), ("Jon", "He"))
OBJECTS = ("apples", "marbles", "pencils", "stickers", "cookies", "books", "shells", "coins", "stamps", "cards")
# Per operation: the sentence of the question, the clause of the solution line.
PHRASES = {
    "+": (("{they} buys {b} more {obj}.", "buying {b} more"), ("{they} finds {b} more {obj}.", "finding {b} more"),
          ("{they} gets {b} more {obj} from a friend.", "getting {b} more")),
    "-": (("{they} gives away {b} {obj}.", "giving away {b}"), ("{they} loses {b} {obj}.", "losing {b}"),
          ("{they} sells {b} {obj}.", "selling {b}")),
    "*": (("{they} ends up with {b} times as many {obj}.", "getting {b} times as many"),),
}


@dataclass(frozen=True)
class ArithOptions:
    """``data.options`` of the arith task."""

    train_size: int = field(default=4000, metadata={"help": "Training problems."})
    test_size: int = field(default=512, metadata={"help": "Test problems (disjoint from training)."})
    seed: int = field(default=0, metadata={"help": "Generation seed."})
    min_steps: int = field(default=1, metadata={"help": "Fewest operations in a problem."})
    max_steps: int = field(default=3, metadata={"help": "Most operations in a problem."})
    max_operand: int = field(default=20, metadata={"help": "Largest starting amount and operand."})
    operations: tuple[str, ...] = field(default=OPERATIONS, metadata={"help": "Operations used: +, -, *."})

    def __post_init__(self):
        for key in ("train_size", "test_size", "min_steps", "max_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {getattr(self, key)}")
        if self.min_steps > self.max_steps:
            raise ConfigError(f"min_steps: must be <= max_steps ({self.max_steps}), got {self.min_steps}")
        if self.max_operand < 2:
            raise ConfigError(f"max_operand: must be >= 2, got {self.max_operand}")
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad or not self.operations or len(set(self.operations)) != len(self.operations):
            raise ConfigError(f"operations: must be distinct values of {', '.join(OPERATIONS)}, got "
                              f"{list(self.operations)}")


def _problem(rng: random.Random, options: ArithOptions) -> dict[str, str]:
    name, they = rng.choice(NAMES)
    obj = rng.choice(OBJECTS)
    value = rng.randint(1, options.max_operand)
    sentences = [f"{name} has {value} {obj}."]
    lines = [f"{name} starts with {value} {obj}."]
    for step in range(rng.randint(options.min_steps, options.max_steps)):
        choices = [op for op in options.operations if op != "-" or value > 0]
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(1, options.max_operand)
            result = value + b
        elif op == "-":
            b = rng.randint(1, min(value, options.max_operand))
            result = value - b
        else:
            b = rng.randint(2, max(2, min(5, options.max_operand)))
            result = value * b
        sentence, clause = rng.choice(PHRASES[op])
        subject = they if step == 0 else f"Then {they.lower()}"
        sentences.append(sentence.format(they=subject, b=b, obj=obj))
        lines.append(f"After {clause.format(b=b)} {they.lower()} has {value} {op} {b} = {result} {obj}.")
        value = result
    sentences.append(f"How many {obj} does {name} have now?")
    return {"question": " ".join(sentences), "answer": "\n".join(lines) + f"\n#### {value}"}


@functools.lru_cache(maxsize=8)
def generate_problems(options_json: str) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(test, train) problems of the options (as canonical JSON): deterministic and disjoint."""
    options = ArithOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(options_json).items()})
    rng = random.Random(f"rankstudy-arith-v{GENERATOR_VERSION}-{options.seed}")
    wanted = options.test_size + options.train_size
    seen: set[str] = set()
    problems: list[dict] = []
    attempts = 0
    while len(problems) < wanted:
        attempts += 1
        if attempts > 20 * wanted + 10_000:
            raise ConfigError(f"options: only {len(problems)} distinct problems found for {wanted} wanted; lower "
                              "train_size/test_size or raise max_operand/max_steps")
        problem = _problem(rng, options)
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    return tuple(problems[: options.test_size]), tuple(problems[options.test_size:])


@register_task
class Arith(GSM8K):
    name = "arith"
    description = "generated GSM8K-style arithmetic word problems, 1-3 steps on small numbers"
    options = ArithOptions

    def generate(self, options: dict, split: str) -> list[dict]:
        test, train = generate_problems(json.dumps(options, sort_keys=True))
        return list(train if split == "train" else test)

    def source_key(self, data, split: str) -> str:
        return f"generated:{self.name}:v{GENERATOR_VERSION}:{json.dumps(data.options, sort_keys=True)}"
