"""Synthetic tasks with exactly checkable answers, and their character tokenizer.

They train the bundled tiny checkpoints and score any decode setting (exact match), so
speed/accuracy trade-offs of parallel decoding can be measured on real, trained models.
Torch-free: the runtime, the profiler and the tests use them too.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

EOS = "<|endoftext|>"
MASK = "<|mask|>"
UNK = "<|unk|>"
SPECIALS = [EOS, MASK, UNK]
ALPHABET = "abcdefghijklmnopqrstuvwxyz"
CHARS = ALPHABET + "0123456789+=:"
TASKS = ("add", "rev", "sort")  # the mix the bundled llada/dream/bd-tiny checkpoints solve
# Long-answer tasks, one per checkpoint (not in the default mix). ``carry``: reversed-digit addition of
# two CARRY_DIGITS-digit numbers (least significant digit first, leading zeros kept), answer CARRY_DIGITS + 1
# digits. Answer digit i is (a_i + b_i + carry_i) mod 10 and carry_i depends on every column before it,
# so a digit after a column summing to 9 is only settled once its neighbour is: parallel decoding has to
# guess there, and the more tokens a forward commits the more of those guesses it makes.
# ``carry_chain`` is the same task with long carry chains: every column sums to 9 with probability 1/2 (else
# both digits are uniform), so a carry often travels through several columns; a model trained on ``carry``
# (where such runs are rare) has to settle them digit by digit.
CARRY_DIGITS = 32
CHAIN_P = 0.5
LONG_TASKS = ("carry", "carry_chain")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


def make_example(rng: random.Random, task: str | None = None) -> Example:
    task = task or rng.choice(TASKS)
    if task in ("carry", "carry_chain"):
        a = [rng.randrange(10) for _ in range(CARRY_DIGITS)]
        if task == "carry":
            b = [rng.randrange(10) for _ in range(CARRY_DIGITS)]
        else:
            b = [9 - x if rng.random() < CHAIN_P else rng.randrange(10) for x in a]
        out, c = [], 0
        for x, y in zip(a, b):
            c, d = divmod(x + y + c, 10)
            out.append(d)
        out.append(c)
        digits = lambda v: "".join(map(str, v))  # noqa: E731
        return Example(f"sum:{digits(a)}+{digits(b)}=", digits(out))
    if task == "add":
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        return Example(f"add:{a}+{b}=", str(a + b))
    word = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(3, 8)))
    if task == "rev":
        return Example(f"rev:{word}=", word[::-1])
    if task == "sort":
        return Example(f"sort:{word}=", "".join(sorted(word)))
    raise ValueError(f"unknown task {task!r}")


def make_examples(n: int, seed: int, task: str | None = None) -> list[Example]:
    """n examples of ``task`` (None: the TASKS mix, each drawn at random)."""
    rng = random.Random(seed)
    return [make_example(rng, task) for _ in range(n)]


def exact_match(predictions: list[str], examples: list[Example]) -> float:
    return sum(p.strip() == e.answer for p, e in zip(predictions, examples)) / max(len(examples), 1)


def build_tokenizer_json() -> str:
    """A character-level WordLevel tokenizer, trained with `tokenizers` on the task alphabet.

    Ids: 0 = <|endoftext|> (EOS), 1 = <|mask|>, 2 = <|unk|>, then one id per character.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS, min_frequency=1)
    corpus = [c * (len(CHARS) - i) for i, c in enumerate(CHARS)]  # fixes the id order: a, b, ...
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str(pretty=True)
