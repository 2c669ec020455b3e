"""Fine-tune OPT-Tri for visual / audio question answering (classification over the answers) with the HF Trainer.

    python examples/finetune_vqa.py --model outputs/tiny/final --output_dir outputs/vqa --context image
    python examples/finetune_vqa.py --model configuration/tiny --output_dir outputs/aqa --context audio   # random init

The question is the text input; the context is the image, the audio or both (`--context`). On the built-in dataset
every ShapeWorld row gives several question/answer pairs (`questions`/`answers`) and the answer vocabulary is
`ANSWERS` (yes/no, colours, shapes, sizes, positions, number words). A local metadata.jsonl folder has a `question`
per row and either one `answer` or a list of human `answers` (VQAv2 style: the targets are then soft scores,
min(1, 0.3 * #annotators) with the usual 0.3/0.6/0.9/1.0 steps, and the loss is binary cross-entropy); its answer
vocabulary is the set of training answers.

The evaluation reports VQA accuracy (our offline `vqa_accuracy` metric) on the held-out split, per question type, and
the accuracy of answering from the question alone (the most frequent training answer of each question type), so that
one can see how much the model uses its context.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer

from modeling_opt_tri import OptTriProcessor
from modeling_opt_tri.data import ANSWERS
from modeling_opt_tri.metrics import load_metric
from modeling_opt_tri.modeling_opt_tri import OptTriForQuestionAnswering
from modeling_opt_tri.training.arguments import CheckedArgumentParser, choice
from modeling_opt_tri.training.finetune import (
    TaskCollator,
    add_finetune_arguments,
    load_model,
    load_train_and_evaluation,
    prepare_for_training,
    save_and_push,
    training_arguments,
)

CONTEXTS = {"image": ["image"], "audio": ["audio"], "both": ["image", "audio"]}


class QuestionDataset(torch.utils.data.Dataset):
    """One item per (scene, question): the scene's image/audio, the question and its human answers."""

    def __init__(self, rows):
        self.rows = rows
        self.index: list[tuple[int, int]] = []
        self.questions: list[str] = []
        self.answers: list[list[str]] = []
        columns = set(rows.column_names)
        table = rows.select_columns([c for c in ("questions", "answers", "question", "answer") if c in columns])
        for i, row in enumerate(table):
            if row.get("questions") is not None:  # ShapeWorld: parallel lists, one answer per question
                for j, (question, answer) in enumerate(zip(row["questions"], row["answers"])):
                    self.index.append((i, j))
                    self.questions.append(question)
                    self.answers.append([answer])
            elif row.get("question"):
                human = row.get("answers")
                human = list(human) if isinstance(human, (list, tuple)) and human else [row["answer"]]
                self.index.append((i, -1))
                self.questions.append(row["question"])
                self.answers.append([str(a) for a in human])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        row = self.rows[self.index[item][0]]
        return {"id": row.get("id"), "image": row.get("image"), "audio": row.get("audio"),
                "question": self.questions[item], "answers": self.answers[item]}


def vqa_score(count: int) -> float:
    """VQAv2 soft score of an answer given by `count` of the annotators (0.3, 0.6, 0.9, then 1.0)."""
    return 1.0 if count >= 4 else 0.3 * count


def question_type(question: str) -> str:
    words = question.lower().split()
    if words[:2] in (["is", "there"], ["is", "the"]):
        return "yes/no"
    return " ".join(words[:2])


def build_parser() -> CheckedArgumentParser:
    parser = CheckedArgumentParser(description=__doc__.splitlines()[0])
    add_finetune_arguments(parser)
    parser.add_argument("--context", choices=sorted(CONTEXTS), default="image", rule=choice(*sorted(CONTEXTS)),
                        help="the modalities answered about")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    processor = OptTriProcessor.from_pretrained(args.model)
    train, held_out, eval_split = load_train_and_evaluation(args)  # --dataset, its columns and held-out rows
    train, held_out = QuestionDataset(train), QuestionDataset(held_out)
    if args.dataset == "builtin":
        vocabulary = list(ANSWERS)
    else:
        vocabulary = sorted({a for answers in train.answers for a in answers})
    answer_id = {a: i for i, a in enumerate(vocabulary)}
    soft = any(len(answers) > 1 for answers in train.answers)

    def target(row):
        if not soft:
            return answer_id.get(row["answers"][0], -100)  # an answer outside the vocabulary is not trained on
        scores = torch.zeros(len(vocabulary))
        for answer, count in Counter(row["answers"]).items():
            if answer in answer_id:
                scores[answer_id[answer]] = vqa_score(count)
        return scores

    collator = TaskCollator(processor, ["text", *CONTEXTS[args.context]], targets=target, text=lambda row: row["question"])
    model = load_model(
        OptTriForQuestionAnswering, args.model, args.seed, new_heads=["classifier"], num_labels=len(vocabulary),
        id2label=dict(enumerate(vocabulary)), label2id=answer_id,
    )
    model, optimizer = prepare_for_training(model, args, head_modules=["classifier"])
    trainer = Trainer(
        model=model, args=training_arguments(args), train_dataset=train, data_collator=collator,
        optimizers=(optimizer, None),
    )
    print(f"{len(train)} training and {len(held_out)} held-out questions; {len(vocabulary)} answers; "
          f"{'soft-score BCE' if soft else 'cross-entropy'} loss; context: {CONTEXTS[args.context]}")
    trainer.train()

    prediction = trainer.predict(held_out)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    answers = [vocabulary[i] for i in np.argmax(logits, -1)]
    metric = load_metric("vqa_accuracy")
    results: dict[str, object] = {
        "context": CONTEXTS[args.context],
        "eval_split": eval_split,
        "vqa_accuracy": metric.compute(predictions=answers, references=held_out.answers)["accuracy"],
        "eval_loss": prediction.metrics.get("test_loss"),
    }
    by_type = defaultdict(list)
    for i, question in enumerate(held_out.questions):
        by_type[question_type(question)].append(i)
    results["vqa_accuracy_by_type"] = {
        kind: round(metric.compute(predictions=[answers[i] for i in rows],
                                   references=[held_out.answers[i] for i in rows])["accuracy"], 4)
        for kind, rows in sorted(by_type.items())
    }
    prior = defaultdict(Counter)
    for question, human in zip(train.questions, train.answers):
        prior[question_type(question)].update(human)
    fallback = Counter(a for human in train.answers for a in human).most_common(1)[0][0]
    blind = [(prior[question_type(q)].most_common(1) or [(fallback,)])[0][0] for q in held_out.questions]
    results["question_only_prior_accuracy"] = metric.compute(predictions=blind, references=held_out.answers)["accuracy"]
    results["examples"] = [
        {"question": q, "answer": a[0], "predicted": p} for q, a, p in list(zip(held_out.questions, held_out.answers, answers))[:8]
    ]
    print(json.dumps(results, indent=1))
    save_and_push(trainer.model, processor, args.output_dir, args.push_to_hub)
    (Path(args.output_dir) / "vqa_metrics.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
