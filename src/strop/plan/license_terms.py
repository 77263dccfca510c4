"""ONE table: the model and data licenses strop knows, and what each allows.

Each entry is a summary of the license text at `source` for two intended
uses; the conditions are the ones a fine-tuner most often misses, not the
whole license. This is not legal advice.
"""
from __future__ import annotations

from dataclasses import dataclass

ALLOWED, CONDITIONS, NOT_ALLOWED, UNKNOWN = "allowed", "allowed with conditions", "not allowed", "unknown"
SEVERITY = {ALLOWED: 0, CONDITIONS: 1, UNKNOWN: 2, NOT_ALLOWED: 3}


@dataclass(frozen=True)
class License:
    key: str
    name: str
    commercial: str
    research: str
    conditions: tuple[str, ...]
    source: str
    aliases: tuple[str, ...] = ()
    text_marks: tuple[str, ...] = ()  # phrases that identify the license in a LICENSE file


_ATTRIB = "keep the copyright and license notice with the weights you distribute"
_LLAMA_MAU = "more than 700 million monthly active users (on the version's release date) needs a separate license from Meta"
_NC = "non-commercial use only"

LICENSES: dict[str, License] = {lic.key: lic for lic in (
    License("cc0-1.0", "CC0 1.0 (public domain dedication)", ALLOWED, ALLOWED, (),
            "https://creativecommons.org/publicdomain/zero/1.0/", ("cc0",), ("CC0 1.0 Universal",)),
    License("unlicense", "The Unlicense", ALLOWED, ALLOWED, (), "https://unlicense.org/", (), ("This is free and unencumbered software",)),
    License("apache-2.0", "Apache License 2.0", CONDITIONS, CONDITIONS,
            (_ATTRIB, "include the NOTICE file if there is one", "state that you changed the files"),
            "https://www.apache.org/licenses/LICENSE-2.0", ("apache 2.0", "apache2", "apache-2"), ("Apache License", "Version 2.0")),
    License("mit", "MIT License", CONDITIONS, CONDITIONS, (_ATTRIB,), "https://opensource.org/license/mit",
            (), ("Permission is hereby granted, free of charge",)),
    License("bsd-3-clause", "BSD 3-Clause", CONDITIONS, CONDITIONS,
            (_ATTRIB, "do not use the authors' names to endorse your product"), "https://opensource.org/license/bsd-3-clause",
            ("bsd",), ("Redistribution and use in source and binary forms", "Neither the name of")),
    License("bsd-2-clause", "BSD 2-Clause", CONDITIONS, CONDITIONS, (_ATTRIB,), "https://opensource.org/license/bsd-2-clause",
            (), ("Redistribution and use in source and binary forms",)),
    License("llama2", "Llama 2 Community License", CONDITIONS, CONDITIONS,
            (_LLAMA_MAU, "follow the Llama 2 Acceptable Use Policy", "ship a copy of the license with the model",
             "do not use Llama 2 outputs to improve any other large language model"),
            "https://ai.meta.com/llama/license/", (), ("LLAMA 2 COMMUNITY LICENSE",)),
    License("llama3", "Meta Llama 3 Community License", CONDITIONS, CONDITIONS,
            (_LLAMA_MAU, "display \"Built with Meta Llama 3\"", "a fine-tuned model's name must begin with \"Llama 3\"",
             "follow the Acceptable Use Policy", "ship the license and the attribution notice"),
            "https://llama.meta.com/llama3/license/", (), ("META LLAMA 3 COMMUNITY LICENSE",)),
    License("llama3.1", "Llama 3.1 Community License", CONDITIONS, CONDITIONS,
            (_LLAMA_MAU, "display \"Built with Llama\"", "a fine-tuned model's name must begin with \"Llama\"",
             "follow the Acceptable Use Policy", "ship the license and the attribution notice"),
            "https://llama.meta.com/llama3_1/license/", (), ("Llama 3.1 Community License",)),
    License("llama3.2", "Llama 3.2 Community License", CONDITIONS, CONDITIONS,
            (_LLAMA_MAU, "display \"Built with Llama\"", "a fine-tuned model's name must begin with \"Llama\"",
             "the multimodal (vision) models grant no rights to people or companies domiciled in the EU",
             "follow the Acceptable Use Policy"),
            "https://www.llama.com/llama3_2/license/", (), ("Llama 3.2 Community License",)),
    License("llama3.3", "Llama 3.3 Community License", CONDITIONS, CONDITIONS,
            (_LLAMA_MAU, "display \"Built with Llama\"", "a fine-tuned model's name must begin with \"Llama\"",
             "follow the Acceptable Use Policy"),
            "https://www.llama.com/llama3_3/license/", (), ("Llama 3.3 Community License",)),
    License("gemma", "Gemma Terms of Use", CONDITIONS, CONDITIONS,
            ("follow the Gemma Prohibited Use Policy", "pass the use restrictions on to anyone you give the model to",
             "ship the notice \"Gemma is provided under and subject to the Gemma Terms of Use\"",
             "Google may restrict use it believes violates the terms"),
            "https://ai.google.dev/gemma/terms", (), ("Gemma Terms of Use",)),
    License("qwen", "Qwen (Tongyi Qianwen) License Agreement", CONDITIONS, CONDITIONS,
            ("more than 100 million monthly active users needs a license from Alibaba Cloud",
             "display \"Built with Qwen\" or \"Improved using Qwen\" in the product documentation", "ship the license"),
            "https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE", ("tongyi-qianwen",),
            ("Qwen LICENSE AGREEMENT", "Tongyi Qianwen LICENSE AGREEMENT")),
    License("qwen-research", "Qwen Research License Agreement", NOT_ALLOWED, CONDITIONS,
            (_NC + " (research and evaluation)", "display \"Built with Qwen\" or \"Improved using Qwen\""),
            "https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE", (), ("Qwen RESEARCH LICENSE AGREEMENT",)),
    License("openrail-m", "OpenRAIL-M", CONDITIONS, CONDITIONS,
            ("the use restrictions (Attachment A) apply to you and must be passed on in every derivative's license",
             "ship a copy of the license"),
            "https://www.licenses.ai/ai-licenses", ("openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigcode-openrail-m"),
            ("Responsible AI License", "OpenRAIL")),
    License("cc-by-4.0", "Creative Commons Attribution 4.0", CONDITIONS, CONDITIONS,
            ("credit the creator and link the license", "say whether you changed the material"),
            "https://creativecommons.org/licenses/by/4.0/", ("cc-by", "cc-by-3.0"), ("Attribution 4.0 International",)),
    License("cc-by-sa-4.0", "Creative Commons Attribution-ShareAlike 4.0", CONDITIONS, CONDITIONS,
            ("credit the creator and link the license",
             "adapted material must be shared under the same license (whether trained weights are adapted material is unsettled)"),
            "https://creativecommons.org/licenses/by-sa/4.0/", ("cc-by-sa", "cc-by-sa-3.0"), ("Attribution-ShareAlike 4.0",)),
    License("cc-by-nc-4.0", "Creative Commons Attribution-NonCommercial 4.0", NOT_ALLOWED, CONDITIONS,
            (_NC, "credit the creator and link the license"), "https://creativecommons.org/licenses/by-nc/4.0/",
            ("cc-by-nc", "cc-by-nc-3.0"), ("Attribution-NonCommercial 4.0",)),
    License("cc-by-nc-sa-4.0", "Creative Commons Attribution-NonCommercial-ShareAlike 4.0", NOT_ALLOWED, CONDITIONS,
            (_NC, "credit the creator", "share adaptations under the same license"),
            "https://creativecommons.org/licenses/by-nc-sa/4.0/", ("cc-by-nc-sa",), ("Attribution-NonCommercial-ShareAlike",)),
    License("cc-by-nc-nd-4.0", "Creative Commons Attribution-NonCommercial-NoDerivatives 4.0", NOT_ALLOWED, NOT_ALLOWED,
            (_NC, "no derivatives may be shared: a fine-tuned model is one"),
            "https://creativecommons.org/licenses/by-nc-nd/4.0/", ("cc-by-nc-nd",), ("NonCommercial-NoDerivatives",)),
    License("gpl-3.0", "GNU GPL v3", CONDITIONS, CONDITIONS,
            ("distributing the model (or software containing it) requires releasing it under the GPL with source",),
            "https://www.gnu.org/licenses/gpl-3.0.html", ("gpl", "gpl-3"), ("GNU GENERAL PUBLIC LICENSE",)),
)}


def lookup(name: str) -> License | None:
    """A license by SPDX-like id, Hugging Face card id, or alias (case-insensitive)."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key in LICENSES:
        return LICENSES[key]
    for lic in LICENSES.values():
        if key in lic.aliases or key == lic.name.lower().replace(" ", "-"):
            return lic
    return None


def from_text(text: str) -> License | None:
    """Identify a LICENSE file by its phrases; the most specific (most phrases) match wins."""
    head = text[:4000]
    best = [lic for lic in LICENSES.values() if lic.text_marks and all(m.lower() in head.lower() for m in lic.text_marks)]
    # "NonCommercial-ShareAlike" also contains "NonCommercial": prefer the longest marks.
    return max(best, key=lambda lic: sum(len(m) for m in lic.text_marks), default=None)
