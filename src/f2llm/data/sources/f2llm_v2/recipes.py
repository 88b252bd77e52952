"""The public F2LLM-v2 data recipe: format, language and instruction of every dataset by name.

Format comes from the official name lists (`names`). Language comes from the name where
it says one: an ISO 639-1 code (`miracl_ar`, `mkqa_zh_cn`), an ISO 639-3 code (`webfaq_deu`),
an English language name (`mmarco_german`, `nordic_sts_danish`) or a translation pair
(`unpc_ar2en`, `paracrawl_en-sw`, `clirmatrix_ar-fr`: the query's language, and the pair as a
direction `ar->en` to group batches by). Code datasets (`csn_*`, `xcodeeval_*`, `cosqa`, ...)
group by programming language, `code:<lang>`. Otherwise a per-record language column where the
data has one, else `mul`. Names on no list, and any dataset to set by hand, go in a map of
overrides (`data.corpus.datasets` in `configs/data/f2llm_v2.yaml`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from f2llm.data.formats import FORMATS
from f2llm.data.records import ISO_639_1, check_language_code
from f2llm.data.sources.f2llm_v2.names import CLASSIFICATION, CLUSTERING, RETRIEVAL

FORMAT_OF_NAME: dict[str, str] = {
    **{n: "classification" for n in CLASSIFICATION},
    **{n: "clustering" for n in CLUSTERING},
    **{n: "retrieval" for n in RETRIEVAL},
}

# ISO 639-3 (as in `webfaq_deu`) -> ISO 639-1, so that every dataset of a language forms one
# language label whatever code its name uses. Codes without a 639-1 form (azj, pnb, pms) stay.
ISO_639_3_TO_1 = {
    "ara": "ar", "aze": "az", "ben": "bn", "bul": "bg", "cat": "ca", "ces": "cs", "dan": "da",
    "deu": "de", "ell": "el", "eng": "en", "est": "et", "fas": "fa", "fin": "fi", "fra": "fr",
    "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "ind": "id", "isl": "is", "ita": "it",
    "jpn": "ja", "kat": "ka", "kaz": "kk", "kor": "ko", "lav": "lv", "lit": "lt", "mar": "mr",
    "msa": "ms", "nld": "nl", "nor": "no", "pol": "pl", "por": "pt", "ron": "ro", "rus": "ru",
    "slk": "sk", "slv": "sl", "spa": "es", "sqi": "sq", "srp": "sr", "swe": "sv", "tgl": "tl",
    "tha": "th", "tur": "tr", "ukr": "uk", "urd": "ur", "uzb": "uz", "vie": "vi", "zho": "zh",
}
# English language names in dataset names (`mmarco_german`, `mrtidy_swahili`).
LANGUAGE_NAMES = {
    "arabic": "ar", "bengali": "bn", "chinese": "zh", "danish": "da", "dutch": "nl",
    "english": "en", "finnish": "fi", "french": "fr", "german": "de", "hindi": "hi",
    "indonesian": "id", "italian": "it", "japanese": "ja", "korean": "ko", "norwegian": "no",
    "persian": "fa",
    "portuguese": "pt", "russian": "ru", "spanish": "es", "swahili": "sw", "swedish": "sv",
    "telugu": "te", "thai": "th", "vietnamese": "vi", "multilingual": "mul",
}
# Programming languages as named in the data (xcodeeval's `_C#`, `_Javascript`; ocr2's `_cpp`).
CODE_LANGUAGES = {
    "c#": "csharp", "c++": "cpp", "cpp": "cpp", "c": "c", "d": "d", "go": "go",
    "haskell": "haskell", "java": "java", "javascript": "javascript", "kotlin": "kotlin",
    "ocaml": "ocaml", "php": "php", "pascal": "pascal", "perl": "perl", "python": "python",
    "ruby": "ruby", "rust": "rust", "scala": "scala", "sql": "sql",
}
# Code datasets: name prefix -> how the programming language is found (a suffix, or fixed).
# CoSQA pairs web queries with Python functions; synthetic_text2sql is text -> SQL; the others
# mix languages (codefeedback, stackoverflow_qa, ocgi, procqa, xcodeeval_translation).
_CODE_SUFFIX_FAMILIES = ("csn_ccr_", "csn_", "xcodeeval_code2code_", "xcodeeval_nl2code_",
                         "ocr2_")
_CODE_FIXED = {"cosqa": "code:python", "synthetic_text2sql": "code:sql"}
_CODE_MIXED_PREFIXES = ("codefeedback_", "stackoverflow_qa", "ocgi", "procqa",
                        "xcodeeval_translation")
# `xx2yy` (unpc) or `xx-yy` (paracrawl, clirmatrix), each side a 2-3 letter code.
_PAIR = re.compile(r"(?P<src>[a-z]{2,3})(?:2|-)(?P<tgt>[a-z]{2,3})")
# Name parts that are ISO 639-1 codes but do not name a language in these names.
_NOT_A_LANGUAGE = frozenset({"mt", "st"})  # codefeedback_mt / _st: multi-turn / single-turn
# Regions after a language (mkqa_zh_cn); `tw` alone would be Twi.
_REGIONS = frozenset({"cn", "hk", "tw"})


@dataclass(frozen=True)
class DatasetRecipe:
    """How one dataset of the public data is trained on.

    `language` is one code for the whole dataset, or None with `language_column` naming the
    per-record column; `direction` ("ar->en") is set for translation pairs; `instruction` is
    the stage-2 task instruction (None: queries already carry one, or none is wanted).
    """

    name: str
    format: str
    language: str | None
    direction: str | None = None
    instruction: str | None = None
    language_column: str | None = None
    source: str = "name"  # where format and language came from: "name" or "override"


def name_language(name: str) -> tuple[str | None, str | None]:
    """(language, direction) that the dataset name states, or (None, None).

    Code datasets give `code:<lang>` (`code:mul` for mixed ones). A pair gives the query
    side's language and the direction, e.g. `unpc_ar2en` -> ("ar", "ar->en").
    """
    if name in _CODE_FIXED:
        return _CODE_FIXED[name], None
    for prefix in _CODE_SUFFIX_FAMILIES:
        if name.startswith(prefix):
            lang = CODE_LANGUAGES.get(name[len(prefix):].lower())
            return (f"code:{lang}" if lang else "code:mul"), None
    if name.startswith(_CODE_MIXED_PREFIXES):
        return "code:mul", None
    parts = name.split("_")
    if len(parts) < 2:
        return None, None
    # Region-qualified Chinese (mkqa_zh_cn, mkqa_zh_hk, mkqa_zh_tw).
    if len(parts) >= 3 and parts[-2] in ISO_639_1 and parts[-1] in _REGIONS:
        return f"{parts[-2]}_{parts[-1].upper()}", None
    last = parts[-1]
    code = _language_code(last)
    if code is not None:
        return code, None
    pair = _PAIR.fullmatch(last)
    if pair is not None:
        src, tgt = _language_code(pair["src"], pairs=True), _language_code(pair["tgt"], pairs=True)
        if src is not None and tgt is not None:
            return src, f"{src}->{tgt}"
    # A leading code or name (ru_sentiment, persian_qa): codes only for the official names,
    # where each was checked; in other names a leading `my_` or `it_` is English, not a code.
    first = _language_code(parts[0])
    if first is not None and (len(parts[0]) > 3 or name in FORMAT_OF_NAME):
        return first, None
    return None, None


def _language_code(part: str, pairs: bool = False) -> str | None:
    if part in _NOT_A_LANGUAGE:
        return None
    if part in ISO_639_1:
        return part
    if part in ISO_639_3_TO_1:
        return ISO_639_3_TO_1[part]
    if part in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[part]
    # Other three-letter codes only inside a pair (paracrawl_en-azj, clirmatrix_nn-pms), where
    # the shape says it is a language; `esci` or `p2p` alone are not.
    if pairs and len(part) == 3 and check_language_code(part) is None:
        return part
    return None


# ---------------------------------------------------------------------------------------------
# Instructions

# Queries starting with this carry their instruction (`Instruct: {task}\nQuery: {text}`).
INSTRUCTED_PREFIX = "Instruct:"
# Stage-2 task instructions per dataset family, for queries that carry none. Sources: the
# instructions E5-mistral trained with (Wang et al. 2024, "Improving Text Embeddings with Large
# Language Models", table of training-data instructions) and the MTEB task instructions that
# E5-mistral, Qwen3-Embedding and F2LLM evaluate with (same wording per task, e.g. Banking77,
# ArxivClusteringP2P, AmazonPolarity). Entries marked "ours" were written here for families
# neither covers. Lookup: the exact name, then the longest matching prefix.
INSTRUCTIONS: dict[str, str] = {
    # -- retrieval: web and Wikipedia QA (E5-mistral)
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "natural_questions": "Given a question, retrieve Wikipedia passages that answer the question",
    "triviaqa": "Retrieve Wikipedia passages that answer the question",
    "squad": "Retrieve Wikipedia passages that answer the question",
    "hotpotqa": "Given a multi-hop question, retrieve documents that can help answer the question",
    "fever": "Given a claim, retrieve documents that support or refute the claim",
    "eli5": "Provided a user question, retrieve the highest voted answers on Reddit ELI5 forum",
    "miracl": "Given a question, retrieve Wikipedia passages that answer the question",
    "mrtidy": "Given a question, retrieve Wikipedia passages that answer the question",
    "mldr": "Given a question, retrieve documents that answer the question",
    "mkqa": "Given a question, retrieve Wikipedia passages that answer the question",
    "mmarco": "Given a web search query, retrieve relevant passages that answer the query",
    "dureader": "Given a Chinese search query, retrieve web passages that answer the question",
    "t2ranking": "Given a Chinese search query, retrieve web passages that answer the question",
    "paq": "Given a question, retrieve Wikipedia passages that answer the question",
    # -- retrieval: MTEB / BEIR tasks (MTEB instructions)
    "arguana": "Given a claim, find documents that refute the claim",
    "scifact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "fiqa": "Given a financial question, retrieve user replies that best answer the question",
    "nfcorpus": "Given a question, retrieve relevant documents that best answer the question",
    "stackoverflowdupquestions": "Retrieve duplicate questions from StackOverflow forum",
    "stackexchangedupquestions": "Retrieve duplicate questions from StackExchange forum",
    "qqp": "Given a question, retrieve questions that are semantically equivalent to the given "
           "question",
    "sts": "Retrieve semantically similar text",
    "pawsx": "Retrieve semantically similar text",
    "nordic_sts": "Retrieve semantically similar text",
    "lcqmc": "Retrieve semantically similar text",
    "bq": "Retrieve semantically similar text",
    "dbpedia": "Given a query, retrieve relevant entity descriptions from DBPedia",
    "cord19": "Given a query on COVID-19, retrieve documents that answer the query",
    # -- retrieval: NLI (E5-mistral)
    "snli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "mnli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "anli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "xnli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "ocnli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "cmnli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    "mscinli": "Given a premise, retrieve a hypothesis that is entailed by the premise",
    # -- retrieval: bitext (MTEB bitext-mining instruction)
    "unpc": "Retrieve parallel sentences",
    "paracrawl": "Retrieve parallel sentences",
    "clirmatrix": "Given a query, retrieve relevant Wikipedia passages in another language",  # ours
    # -- retrieval: code (CoIR-style wording; ours)
    "csn_ccr": "Given a piece of code, retrieve the code that continues it",
    "csn": "Given a code search query, retrieve the code that matches it",
    "cosqa": "Given a web search query, retrieve the code that answers it",
    "synthetic_text2sql": "Given a question about a database, retrieve the SQL query that answers "
                          "it",
    "xcodeeval_code2code": "Given a piece of code, retrieve code with the same functionality",
    "xcodeeval_nl2code": "Given a programming problem, retrieve the code that solves it",
    "codefeedback": "Given a programming question, retrieve the answer",
    "stackoverflow_qa": "Given a programming question, retrieve the answer",
    "procqa": "Given a programming question, retrieve the answer",
    "ocgi": "Given an instruction, retrieve code that follows it",
    "ocr2": "Given a programming problem, retrieve the code that solves it",
    # -- retrieval: summarisation, citation, scientific (E5-mistral for s2orc / specter / xsum)
    "cnn_dm": "Given a news article, retrieve its summary",
    "xsum": "Given a news article, retrieve its summary",
    "lcsts": "Given a news article, retrieve its summary",
    "sentence_compression": "Given a sentence, retrieve its compressed version",
    "s2orc_title_abstract": "Given a title, retrieve the abstract of the paper",
    "s2orc_title_citation": "Given a title, retrieve the titles of papers it cites",
    "s2orc_abstract_citation": "Given an abstract, retrieve the abstracts of papers it cites",
    "specter": "Given a title, retrieve the titles of related scientific papers",
    "mlsum_retrieval": "Given a news headline, retrieve the news article",  # ours
    # -- retrieval: QA forums, FAQs, instructions, medical (ours unless noted)
    "webfaq": "Given a question, retrieve the answer from a FAQ page",
    "mqa": "Given a question, retrieve the answer from a FAQ page",
    "stackexchange": "Given a question, retrieve the answer on StackExchange",
    "amazon_qa": "Given a product question, retrieve the answer",
    "yahoo_answers": "Given a question, retrieve the answer",
    "gooaq": "Given a web search question, retrieve the answer",
    "pubmedqa": "Given a medical question, retrieve the abstract that answers it",
    "bioasq": "Given a biomedical question, retrieve documents that answer it",
    "esci": "Given a product search query, retrieve relevant products",
    "multicpr_ecom": "Given a product search query, retrieve relevant products",
    "multicpr_medical": "Given a medical question, retrieve the answer",
    "coliee": "Given a legal case, retrieve the cases it cites",
    # -- classification (MTEB instructions)
    "amazon_counterfactual": "Classify a given Amazon customer review text as either "
                             "counterfactual or not-counterfactual",
    "amazon_polarity": "Classify Amazon reviews into positive or negative sentiment",
    "imdb": "Classify the sentiment expressed in the given movie review text from the IMDB "
            "dataset",
    "toxic_conversations": "Classify the given comments as either toxic or not toxic",
    "cola": "Classify the given sentence as grammatically acceptable or not",  # ours
    "mela": "Classify the given sentence as grammatically acceptable or not",  # ours
    "waimai": "Classify the sentiment of the given food delivery review",  # ours
    "nordic_classification": "Classify the sentiment of the given text",  # ours
    # -- clustering (MTEB instructions)
    "amazon_reviews": "Classify the given Amazon review into its appropriate rating category",
    "banking77": "Given a online banking query, find the corresponding intents",
    "emotion": "Classify the emotion expressed in the given Twitter message into one of the six "
               "emotions: anger, fear, joy, love, sadness, and surprise",
    "mtop_intent": "Classify the intent of the given utterance in task-oriented conversation",
    "mtop_domain": "Classify the intent domain of the given utterance in task-oriented "
                   "conversation",
    "massive_scenario": "Given a user utterance as query, find the user scenarios",
    "massive_intent": "Given a user utterance as query, find the user intents",
    "tweet_sentiment_extraction": "Classify the sentiment of a given tweet as either positive, "
                                  "negative, or neutral",
    "arxiv_clustering_p2p": "Identify the main and secondary category of Arxiv papers based on "
                            "the titles and abstracts",
    "arxiv_clustering_s2s": "Identify the main and secondary category of Arxiv papers based on "
                            "the titles",
    "biorxiv_clustering_p2p": "Identify the main category of Biorxiv papers based on the titles "
                              "and abstracts",
    "biorxiv_clustering_s2s": "Identify the main category of Biorxiv papers based on the titles",
    "medrxiv_clustering_p2p": "Identify the main category of Medrxiv papers based on the titles "
                              "and abstracts",
    "medrxiv_clustering_s2s": "Identify the main category of Medrxiv papers based on the titles",
    "reddit_clustering_p2p": "Identify the topic or theme of Reddit posts based on the titles "
                             "and posts",
    "reddit_clustering_s2s": "Identify the topic or theme of Reddit posts based on the titles",
    "stackexchange_clustering_p2p": "Identify the topic or theme of StackExchange posts based on "
                                    "the given paragraphs",
    "stackexchange_clustering_s2s": "Identify the topic or theme of StackExchange posts based on "
                                    "the titles",
    "twentynewsgroups": "Identify the topic or theme of the given news articles",
    "sib200": "Identify the topic of the given sentence",  # ours
    "mlsum_clustering": "Identify the topic of the given news article",  # ours
    "bactrianx_language_classification": "Identify the language of the given text",  # ours
    "bactrianx_translation": "Identify the meaning of the given text",  # ours
    "europarl": "Identify the meaning of the given sentence",  # ours
    "xcodeeval_translation": "Identify the functionality of the given code",  # ours
    "tnews": "Classify the fine-grained category of the given news title",
    "thucnews": "Identify the topic or theme of the given news articles",
    "csl": "Identify the main category of scholar papers based on the titles",
    "cedr": "Classify the emotion expressed in the given text",  # ours
    "ru_sentiment": "Classify the sentiment of the given text",  # ours
}
# Every other dataset: by format (the retrieval one is Qwen3-Embedding's default query prompt).
DEFAULT_INSTRUCTIONS = {
    "retrieval": "Given a web search query, retrieve relevant passages that answer the query",
    "clustering": "Identify the topic or theme of the given text",  # ours
    "classification": "Classify the given text",  # ours
}


def instruction_for(name: str, fmt: str) -> str:
    """The table's instruction for `name`: exact name, longest family prefix, else the format's."""
    if name in INSTRUCTIONS:
        return INSTRUCTIONS[name]
    prefixes = [p for p in INSTRUCTIONS if name.startswith(p + "_") or name.startswith(p)]
    if prefixes:
        return INSTRUCTIONS[max(prefixes, key=len)]
    return DEFAULT_INSTRUCTIONS[fmt]


# ---------------------------------------------------------------------------------------------
# Resolution

OVERRIDE_KEYS = ("format", "language", "language_column", "direction", "instruction")


class UnknownDatasetError(ValueError):
    """Dataset names on none of the official lists and not in the overrides map."""


def resolve_recipes(
    names: Iterable[str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    language_columns: Mapping[str, str] | None = None,
) -> list[DatasetRecipe]:
    """A recipe per dataset name. `overrides[name]` sets any of format, language,
    language_column, direction, instruction by hand (needed for names on no list);
    `language_columns[name]` is a per-record language column found in the data, used where the
    name states no language. All unknown names are reported at once."""
    overrides = {k: dict(v or {}) for k, v in (overrides or {}).items()}
    language_columns = dict(language_columns or {})
    names = list(names)
    bad_keys = {n: sorted(set(o) - set(OVERRIDE_KEYS)) for n, o in overrides.items()
                if set(o) - set(OVERRIDE_KEYS)}
    if bad_keys:
        raise ValueError(f"data.corpus.datasets: unknown keys {bad_keys}; valid keys: "
                         f"{', '.join(OVERRIDE_KEYS)}")
    unknown = [n for n in names if n not in FORMAT_OF_NAME and "format" not in overrides.get(n, {})]
    if unknown:
        example = unknown[0]
        raise UnknownDatasetError(
            f"{len(unknown)} dataset(s) on none of the official F2LLM-v2 name lists "
            f"(F2LLM/utils.py): {', '.join(unknown)}. Assign each a format (and a language or "
            f"language_column, and an instruction) by hand in data.corpus.datasets, e.g. "
            f"data.corpus.datasets='{{{example}: {{format: retrieval, language: en, "
            f"instruction: \"Given a question, retrieve the answer\"}}}}' or in YAML:\n"
            f"  datasets:\n    {example}: {{format: retrieval, language: en}}")
    recipes = []
    for name in names:
        o = overrides.get(name, {})
        fmt = o.get("format", FORMAT_OF_NAME.get(name))
        if fmt not in FORMATS:
            raise ValueError(f"data.corpus.datasets.{name}.format: {fmt!r}; valid formats: "
                             f"{', '.join(sorted(FORMATS))}")
        language, direction = name_language(name)
        column = None
        if language is None and name in language_columns:
            column = language_columns[name]
        recipe = DatasetRecipe(name, fmt, language if column is None else None, direction,
                               instruction_for(name, fmt), column)
        if o:
            if "language_column" in o and "language" not in o:
                o = {**o, "language": None}
            if "language" in o and "language_column" not in o:
                o = {**o, "language_column": None}
            recipe = replace(recipe, **o, source="override")
        if recipe.language is None and recipe.language_column is None:
            recipe = replace(recipe, language="mul")
        recipes.append(recipe)
    return recipes
