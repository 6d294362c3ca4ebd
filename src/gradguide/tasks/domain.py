"""Domain tasks: finance, customer support, legal, science and medicine (shared/data/domain/).

Splits follow shared/data/MANIFEST.md: ``train`` and ``test`` (SciCite's ``train`` is its official
dev.jsonl, the few-shot pool, because the official train file is absent). Ids are
``"<split>:<line>"`` (PubMedQA: ``"<split>:<PubMed id>"``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from gradguide.errors import GradguideError
from gradguide.tasks.generic import TemplateTask, record_rows, require, suite_task
from gradguide.tasks.readers import (
    Record,
    read_delimited,
    read_json_dict,
    read_jsonl,
    read_label_lines,
)

BANKING77_LABELS: tuple[str, ...] = (
    "Refund_not_showing_up", "activate_my_card", "age_limit", "apple_pay_or_google_pay",
    "atm_support", "automatic_top_up", "balance_not_updated_after_bank_transfer",
    "balance_not_updated_after_cheque_or_cash_deposit", "beneficiary_not_allowed",
    "cancel_transfer", "card_about_to_expire", "card_acceptance", "card_arrival",
    "card_delivery_estimate", "card_linking", "card_not_working", "card_payment_fee_charged",
    "card_payment_not_recognised", "card_payment_wrong_exchange_rate", "card_swallowed",
    "cash_withdrawal_charge", "cash_withdrawal_not_recognised", "change_pin", "compromised_card",
    "contactless_not_working", "country_support", "declined_card_payment",
    "declined_cash_withdrawal", "declined_transfer", "direct_debit_payment_not_recognised",
    "disposable_card_limits", "edit_personal_details", "exchange_charge", "exchange_rate",
    "exchange_via_app", "extra_charge_on_statement", "failed_transfer", "fiat_currency_support",
    "get_disposable_virtual_card", "get_physical_card", "getting_spare_card",
    "getting_virtual_card", "lost_or_stolen_card", "lost_or_stolen_phone", "order_physical_card",
    "passcode_forgotten", "pending_card_payment", "pending_cash_withdrawal", "pending_top_up",
    "pending_transfer", "pin_blocked", "receiving_money", "request_refund",
    "reverted_card_payment?", "supported_cards_and_currencies", "terminate_account",
    "top_up_by_bank_transfer_charge", "top_up_by_card_charge", "top_up_by_cash_or_cheque",
    "top_up_failed", "top_up_limits", "top_up_reverted", "topping_up_by_card",
    "transaction_charged_twice", "transfer_fee_charged", "transfer_into_account",
    "transfer_not_received_by_recipient", "transfer_timing", "unable_to_verify_identity",
    "verify_my_identity", "verify_source_of_funds", "verify_top_up", "virtual_card_not_working",
    "visa_or_mastercard", "why_verify_identity", "wrong_amount_of_cash_received",
    "wrong_exchange_rate_for_cash_withdrawal",
)  # fmt: skip

UNFAIR_TOS_LABELS: tuple[str, ...] = (
    "Other",
    "Arbitration",
    "Unilateral change",
    "Content removal",
    "Choice of law",
    "Unilateral termination",
    "Limitation of liability",
    "Jurisdiction",
    "Contract by using",
)


_task = partial(suite_task, "domain")


def _pubmedqa_prepare(record: Record, path: Path, line: int) -> Record:
    """PubMedQA: the question and its abstract's context sections joined into one passage."""
    contexts = require(record, "CONTEXTS", list, path, line)
    for index, section in enumerate(contexts):
        if not isinstance(section, str):
            raise GradguideError(
                f"expected text, found {type(section).__name__}",
                file=path,
                line=line,
                field=f"CONTEXTS[{index}]",
            )
    return {
        **record,
        "question": require(record, "QUESTION", str, path, line),
        "context": " ".join(section.strip() for section in contexts),
    }


TASKS: tuple[TemplateTask, ...] = (
    _task(
        "financial_phrasebank",
        "Financial PhraseBank (Malo et al.; 50% agreement): sentiment of a financial news "
        "sentence. Splits train (2836), test (2000). Licence CC BY-NC-SA 3.0.",
        ("negative", "neutral", "positive"),
        "Sentence: {text}\nSentiment:",
        {"negative": " negative", "neutral": " neutral", "positive": " positive"},
        ("text",),
        {"train": "train.txt", "test": "test.txt"},
        partial(read_label_lines, fmt="at", encoding="latin-1"),
        metrics=("accuracy", "macro_f1"),  # about 60% 'neutral'
    ),
    _task(
        "banking77",
        "Banking77: the intent (77 classes) of a customer-support banking query. "
        "Splits train (5000), test (2000).",
        BANKING77_LABELS,
        "Query: {text}\nIntent:",
        {label: " " + label.replace("_", " ") for label in BANKING77_LABELS},
        ("text",),
        {"train": "train.csv", "test": "test.csv"},
        partial(read_delimited, delimiter=",", encoding="utf-8"),
        rows=record_rows(label_field="category"),
    ),
    _task(
        "legal_unfair_tos",
        "LegalBench unfair_tos: the type of a Terms-of-Service clause (9 classes, about 90% "
        "'Other'). Splits train (1822), test (2000).",
        UNFAIR_TOS_LABELS,
        "Clause: {text}\nClause type:",
        {label: " " + label.lower() for label in UNFAIR_TOS_LABELS},
        ("text",),
        {"train": "train.tsv", "test": "test.tsv"},
        partial(read_delimited, delimiter="\t", encoding="utf-8"),
        metrics=("accuracy", "macro_f1"),  # 90% 'Other': accuracy alone rewards the majority
    ),
    _task(
        "scicite",
        "SciCite: the intent of a citation (background, method, result). The official train "
        "file is absent: split train = the official dev.jsonl (916), test = test.jsonl (1862).",
        ("background", "method", "result"),
        "Citation: {string}\nCitation intent:",
        {"background": " background", "method": " method", "result": " result"},
        ("string",),
        {"train": "dev.jsonl", "test": "test.jsonl"},
        partial(read_jsonl, encoding="utf-8"),
    ),
    _task(
        "medical_abstracts",
        "Medical Abstracts (Schopf et al.): the condition class of a medical abstract (5 "
        "classes). Both splits come from the official test file: train (657), test (2000).",
        ("1", "2", "3", "4", "5"),
        "Abstract: {medical_abstract}\nTopic:",
        {
            "1": " neoplasms",
            "2": " digestive",
            "3": " nervous",
            "4": " cardiovascular",
            "5": " general",
        },
        ("medical_abstract",),
        {"train": "train.csv", "test": "test.csv"},
        partial(read_delimited, delimiter=",", encoding="utf-8"),
        rows=record_rows(label_field="condition_label"),
    ),
    _task(
        "pubmedqa",
        "PubMedQA (PQA-L): answer a biomedical research question yes/no/maybe from its abstract. "
        "Splits train (500), test (500, the official test PMIDs).",
        ("yes", "no", "maybe"),
        "Context: {context}\nQuestion: {question}\nAnswer:",
        {"yes": " yes", "no": " no", "maybe": " maybe"},
        ("context", "question"),
        {"train": "train.json", "test": "test.json"},
        partial(read_json_dict, key_field="id", encoding="utf-8"),
        rows=record_rows(label_field="final_decision", id_field="id", prepare=_pubmedqa_prepare),
    ),
)
