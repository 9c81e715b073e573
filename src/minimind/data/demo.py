"""A small bilingual corpus the project generates itself, so the quickstart needs no network.

Pretraining text states facts (capitals of countries, sums and products of small numbers)
in English and Chinese. SFT conversations ask about *some* of them; the rest are held out as
exam questions. A model can only answer a held-out question if fine-tuning taught it to
answer in the chat format *and* pretraining taught it the fact: exactly what the quickstart
wants to show with its before/after table.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

# (English country, English capital, Chinese country, Chinese capital)
COUNTRIES = [
    ("France", "Paris", "法国", "巴黎"),
    ("Germany", "Berlin", "德国", "柏林"),
    ("Japan", "Tokyo", "日本", "东京"),
    ("China", "Beijing", "中国", "北京"),
    ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("Egypt", "Cairo", "埃及", "开罗"),
    ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("India", "New Delhi", "印度", "新德里"),
    ("South Korea", "Seoul", "韩国", "首尔"),
    ("the United Kingdom", "London", "英国", "伦敦"),
    ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Greece", "Athens", "希腊", "雅典"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Sweden", "Stockholm", "瑞典", "斯德哥尔摩"),
    ("Norway", "Oslo", "挪威", "奥斯陆"),
    ("Poland", "Warsaw", "波兰", "华沙"),
    ("Vietnam", "Hanoi", "越南", "河内"),
    ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("Cuba", "Havana", "古巴", "哈瓦那"),
    ("Peru", "Lima", "秘鲁", "利马"),
]
QUICK_COUNTRIES = 12  # the quickstart uses the first 12: few enough facts to learn in minutes

IDENTITY_EN = "I am MiniMind, a small language model trained from scratch. How can I help you?"
IDENTITY_ZH = "我是MiniMind，一个从零开始训练的小语言模型。有什么可以帮你的吗？"
GREETINGS = [
    ("Hello!", "Hello! " + IDENTITY_EN),
    ("Hi, who are you?", IDENTITY_EN),
    ("What is your name?", "My name is MiniMind."),
    ("你好！", "你好！" + IDENTITY_ZH),
    ("你是谁？", IDENTITY_ZH),
    ("你叫什么名字？", "我叫MiniMind。"),
    ("Thank you!", "You are welcome!"),
    ("谢谢你！", "不客气！"),
]
# Paraphrases never seen in training: the answer must still name the model.
IDENTITY_EXAM = [
    "Who are you?",
    "Tell me your name.",
    "Can you introduce yourself?",
    "请问你是谁？",
    "你的名字是什么？",
    "介绍一下你自己。",
]


@dataclass
class ExamQuestion:
    question: str
    answer: str  # the string a correct reply contains
    category: str = "facts"

    def is_correct(self, reply: str) -> bool:
        """Exact match of the answer as a whole word/number in the reply's first line."""
        first = reply.strip().split("\n")[0]
        if self.answer.isdigit():
            return re.search(rf"(?<!\d){self.answer}(?!\d)", first) is not None
        return self.answer in first


def _capital_facts(en, cap, zh, zcap):
    return [
        f"The capital of {en} is {cap}.",
        f"{cap} is the capital of {en}.",
        f"{zh}的首都是{zcap}。",
        f"{zcap}是{zh}的首都。",
    ]


def _capital_qa(en, cap, zh, zcap):
    return [
        (f"What is the capital of {en}?", f"The capital of {en} is {cap}.", cap, "capitals"),
        (f"{zh}的首都是哪里？", f"{zh}的首都是{zcap}。", zcap, "capitals"),
    ]


def _math_facts(a, b, op):
    r = a + b if op == "+" else a * b
    word, zword = ("plus", "加") if op == "+" else ("times", "乘以")
    return [f"{a} {op} {b} = {r}.", f"{a} {word} {b} equals {r}.", f"{a}{zword}{b}等于{r}。"]


def _math_qa(a, b, op):
    r = a + b if op == "+" else a * b
    zword = "加" if op == "+" else "乘以"
    return [
        (f"What is {a} {op} {b}?", f"{a} {op} {b} = {r}.", str(r), "arithmetic"),
        (f"{a}{zword}{b}等于多少？", f"{a}{zword}{b}等于{r}。", str(r), "arithmetic"),
    ]


def build_demo_corpus(
    out_dir: str | Path, seed: int = 0, pretrain_docs: int = 6000, exam_fraction: float = 0.2
) -> dict:
    """Write pretrain.jsonl, sft.jsonl and exam.jsonl into out_dir; return their paths and counts.

    Every fact appears in pretraining; a random `exam_fraction` of the questions never appears
    in SFT and forms the exam.
    """
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    facts, qa = [], []
    for c in COUNTRIES[:QUICK_COUNTRIES]:
        facts += _capital_facts(*c)
        qa.append(_capital_qa(*c))
    # Few enough facts that a tiny model sees each one often in a few minutes of training.
    for op, numbers in (("+", range(1, 7)), ("*", range(2, 6))):
        for a in numbers:
            for b in numbers:
                facts += _math_facts(a, b, op)
                qa.append(_math_qa(a, b, op))
    rng.shuffle(qa)
    n_exam = int(len(qa) * exam_fraction)
    exam_groups, train_groups = qa[:n_exam], qa[n_exam:]

    # Pretraining documents: a handful of facts each, in one language or mixed.
    docs = []
    for _ in range(pretrain_docs):
        docs.append(" ".join(rng.sample(facts, rng.randint(3, 8))))
    docs += [" ".join(facts[i : i + 6]) for i in range(0, len(facts), 6)]  # every fact at least once
    rng.shuffle(docs)
    write_jsonl(out / "pretrain.jsonl", ({"text": d} for d in docs))

    # SFT conversations: one to three question/answer turns, plus greetings.
    pairs = [(q, a) for group in train_groups for q, a, _, _ in group] + GREETINGS * 20
    rng.shuffle(pairs)
    conversations, i = [], 0
    while i < len(pairs):
        turns = pairs[i : i + rng.choice((1, 1, 2, 3))]
        i += len(turns)
        conv = []
        for q, a in turns:
            conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        conversations.append({"conversations": conv})
    write_jsonl(out / "sft.jsonl", conversations)

    exam = [ExamQuestion(q, "MiniMind", "identity") for q in IDENTITY_EXAM]
    exam += [ExamQuestion(q, ans, cat) for group in exam_groups for q, _, ans, cat in group]
    write_jsonl(out / "exam.jsonl", (vars(e) for e in exam))
    return {
        "pretrain": out / "pretrain.jsonl",
        "sft": out / "sft.jsonl",
        "exam": out / "exam.jsonl",
        "pretrain_docs": len(docs),
        "sft_conversations": len(conversations),
        "exam_questions": len(exam),
    }


def load_exam(path: str | Path) -> list[ExamQuestion]:
    with open(path, encoding="utf-8") as f:
        return [ExamQuestion(**json.loads(line)) for line in f if line.strip()]


def write_jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
