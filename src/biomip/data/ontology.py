"""Ontology of segmentation targets and the text prompts that name them (case study 1, BiomedParse).

BiomedParse (Zhao et al., Nat Methods 2025; textbook 2.5) organises its objects as an
ontology: three top categories (organ, abnormality, histology), meta-object types under
them, and fine-grained targets, each with synonyms and free-text descriptions; during
training a prompt is drawn at random from the synonyms and task templates so that the
model learns many ways of naming the same object.  This module holds a small ontology
written for biomip (``ontology.json``, shipped in the package) and the prompt tools built
on it:

* :class:`Ontology` -- categories, meta types, :class:`Target` objects and
  :class:`Modality` objects (names and anatomical sites), prompt templates;
* :meth:`Ontology.prompt` -- a random (seeded) or canonical prompt for a target and a
  modality, e.g. ``"liver in abdomen CT"``;
* :meth:`Ontology.parse` -- the target and modality a free-text prompt names (longest
  phrase match on normalised words);
* :func:`load_ontology` -- the packaged ontology or a user's JSON file of the same form;
* :func:`check_prompt` -- validation of a user's prompt.

Words are normalised as :func:`split_words` does: Unicode NFKD, accents dropped,
lower case, runs of ``[a-z0-9]`` (so ``"H&E"`` is the two words ``h e`` and
``"fluid-filled"`` is ``fluid filled``).

Examples
--------
>>> ont = load_ontology()
>>> ont.prompt("liver", "ct", kind="canonical")
'liver in abdomen CT'
>>> ont.parse("Segment the tumour on this breast sonography image")
{'target': 'tumor', 'modality': 'ultrasound'}
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import numpy as np

from ..core.arrays import check_number
from ..core.errors import InputError, describe

__all__ = ["Modality", "Ontology", "PROMPT_KINDS", "Target", "check_prompt", "load_ontology", "split_words"]

#: The prompt kinds :meth:`Ontology.prompt` makes.
PROMPT_KINDS = ("any", "template", "description", "canonical")

_WORD = re.compile(r"[a-z0-9]+")
_FIELDS = frozenset({"target", "description", "site", "modality"})


#: Words that end the first noun phrase of a prompt (its last target word is the head noun).
_PREPOSITIONS = frozenset({"in", "on", "of", "within", "inside", "from", "at", "for", "with", "into", "across"})


def split_words(text: str) -> tuple[str, ...]:
    """Normalised words of a text: NFKD, accents dropped, lower case, runs of ``[a-z0-9]``.

    Parameters
    ----------
    text : str
        Any text.

    Returns
    -------
    tuple of str
        The words; punctuation and other symbols separate words and are dropped.

    Raises
    ------
    InputError
        When ``text`` is not a string.

    Examples
    --------
    >>> split_words("Tumour in H&E-stained Colon!")
    ('tumour', 'in', 'h', 'e', 'stained', 'colon')
    >>> split_words("café")
    ('cafe',)
    """
    if not isinstance(text, str):
        raise InputError(f"text: got {describe(text)}; expected a str")
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return tuple(_WORD.findall(plain.lower()))


def check_prompt(prompt, max_words: int = 32) -> str:
    """Validate a text prompt and return it normalised.

    Parameters
    ----------
    prompt : str
        The prompt, e.g. ``"tumor in breast ultrasound"``.
    max_words : int, optional
        Most words (as :func:`split_words` counts them: what the text encoders see) a
        prompt may have.

    Returns
    -------
    str
        The prompt in Unicode NFKC form with each run of whitespace replaced by one space
        and no leading / trailing space (case and punctuation are kept).

    Raises
    ------
    InputError
        When ``prompt`` is not a string, is empty or whitespace, has no letter or digit,
        or has more than ``max_words`` words.

    Examples
    --------
    >>> check_prompt("  liver   in abdomen\\tCT ")
    'liver in abdomen CT'
    """
    max_words = check_number(max_words, "max_words", integer=True, low=1)
    if not isinstance(prompt, str):
        raise InputError(f"prompt: got {describe(prompt)}; expected a str such as 'tumor in breast ultrasound'")
    text = " ".join(unicodedata.normalize("NFKC", prompt).split())
    if not text:
        raise InputError(f"prompt: got {prompt!r}; expected a non-empty text such as 'tumor in breast ultrasound'")
    n = len(split_words(text))
    if n == 0:
        raise InputError(f"prompt: got {prompt[:80]!r} with no letter or digit; expected words such as "
                         "'tumor in breast ultrasound'")
    if n > max_words:
        raise InputError(f"prompt: got {n} words; expected at most {max_words} words (shorten the prompt)")
    return text


@dataclass(frozen=True)
class Target:
    """One fine-grained target of the ontology.

    Parameters
    ----------
    id : str
        Identifier, also the target's primary name (``"grey matter"``).
    category : str
        Top category (``"organ"``, ``"abnormality"`` or ``"histology"`` in the packaged
        ontology).
    meta : str
        Meta-object type (``"brain structure"``).
    synonyms : tuple of str
        Other names (not including ``id``).
    descriptions : tuple of str
        Free-text descriptions of what the target looks like.
    modalities : tuple of str
        Ids of the modalities it occurs in.

    Examples
    --------
    >>> t = load_ontology().targets["cyst"]
    >>> t.category, t.meta, t.names[:2]
    ('abnormality', 'fluid collection', ('cyst', 'cysts'))
    """

    id: str
    category: str
    meta: str
    synonyms: tuple[str, ...]
    descriptions: tuple[str, ...]
    modalities: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """``id`` followed by the synonyms: every name a prompt may use."""
        return (self.id, *self.synonyms)


@dataclass(frozen=True)
class Modality:
    """One imaging modality of the ontology.

    Parameters
    ----------
    id : str
        Identifier (``"ct"``).
    names : tuple of str
        Names a prompt may use; the first is the primary one (``"CT"``).
    sites : tuple of str
        Anatomical sites / specimens; the first is the primary one (``"abdomen"``).

    Examples
    --------
    >>> m = load_ontology().modalities["he"]
    >>> m.names[0], m.sites[0]
    ('H&E pathology', 'colon')
    """

    id: str
    names: tuple[str, ...]
    sites: tuple[str, ...]


def _strings(value, name: str, nonempty: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InputError(f"{name}: got {describe(value)}; expected a list of strings")
    bad = [v for v in value if not isinstance(v, str) or not v.strip()]
    if bad:
        raise InputError(f"{name}: got {describe(bad[0])}; expected non-empty strings")
    if nonempty and not value:
        raise InputError(f"{name}: got an empty list; expected at least one string")
    return tuple(value)


def _template_fields(template: str, name: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise InputError(f"{name}: got {template!r}, not a valid format string ({err})") from None
    fields = {f for _, f, _, _ in parsed if f is not None}
    if not fields <= _FIELDS or any(spec or conv for _, f, spec, conv in parsed if f is not None):
        raise InputError(f"{name}: got {template!r}; expected only the fields {{target}}, {{description}}, "
                         "{site}, {modality} (no format specs)")
    if len(fields & {"target", "description"}) != 1:
        raise InputError(f"{name}: got {template!r}; expected exactly one of {{target}} and {{description}}")
    return fields


def _contains(haystack: tuple[str, ...], needle: tuple[str, ...]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


@dataclass(frozen=True)
class Ontology:
    """An ontology of segmentation targets, imaging modalities and prompt templates.

    Usually made by :func:`load_ontology`; a directly built ontology is checked with
    :meth:`validate`.

    Parameters
    ----------
    categories : tuple of str
        Top categories, in a fixed order.
    meta_types : tuple of str
        Meta-object types, in a fixed order (the classes of a meta-type classifier: see
        :meth:`meta_index`).
    meta_categories : mapping of str to str
        The top category of each meta type.
    targets : mapping of str to Target
        Targets by id, in a fixed order.
    modalities : mapping of str to Modality
        Modalities by id, in a fixed order.
    templates : tuple of str
        Prompt templates: format strings with exactly one of the fields ``{target}``
        (filled with a name of the target) and ``{description}`` (one of its
        descriptions), and optionally ``{site}`` and ``{modality}`` (a name of the
        modality).

    Examples
    --------
    >>> ont = load_ontology()
    >>> ont.categories
    ('organ', 'abnormality', 'histology')
    >>> ont.targets_of("mri")
    ('tumor', 'ventricle', 'grey matter', 'white matter', 'heart')
    >>> ont.meta_types[ont.meta_index("gland")]
    'glandular structure'
    """

    categories: tuple[str, ...]
    meta_types: tuple[str, ...]
    meta_categories: Mapping[str, str]
    targets: Mapping[str, Target]
    modalities: Mapping[str, Modality]
    templates: tuple[str, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "categories", tuple(self.categories))
        object.__setattr__(self, "meta_types", tuple(self.meta_types))
        object.__setattr__(self, "meta_categories", MappingProxyType(dict(self.meta_categories)))
        object.__setattr__(self, "targets", MappingProxyType(dict(self.targets)))
        object.__setattr__(self, "modalities", MappingProxyType(dict(self.modalities)))
        object.__setattr__(self, "templates", tuple(self.templates))

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, data: Mapping) -> Ontology:
        """Build an ontology from the JSON form of ``ontology.json`` (not validated).

        Parameters
        ----------
        data : mapping
            With the keys ``categories`` (list of str), ``meta_types`` (list of
            ``{"id", "category"}``), ``modalities`` (list of ``{"id", "names",
            "sites"}``), ``targets`` (list of ``{"id", "category", "meta", "synonyms",
            "descriptions", "modalities"}``) and ``templates`` (list of str).

        Returns
        -------
        Ontology
            The ontology.

        Raises
        ------
        InputError
            When a key is missing or has the wrong type.

        Examples
        --------
        >>> ont = load_ontology()
        >>> Ontology.from_dict(ont.to_dict()) == ont
        True
        """
        if not isinstance(data, Mapping):
            raise InputError(f"data: got {describe(data)}; expected a mapping (the JSON object of an ontology)")
        missing = [k for k in ("categories", "meta_types", "modalities", "targets", "templates") if k not in data]
        if missing:
            raise InputError(f"data: missing key(s) {missing}; expected categories, meta_types, modalities, "
                             "targets and templates")

        def items(key, fields):
            value = data[key]
            if not isinstance(value, list):
                raise InputError(f"{key}: got {describe(value)}; expected a list of objects")
            for i, item in enumerate(value):
                if not isinstance(item, Mapping) or any(f not in item for f in fields):
                    raise InputError(f"{key}[{i}]: got {describe(item)}; expected an object with the keys "
                                     f"{list(fields)}")
                if not isinstance(item["id"], str) or not item["id"].strip():
                    raise InputError(f"{key}[{i}].id: got {describe(item['id'])}; expected a non-empty str")
            return value

        metas = items("meta_types", ("id", "category"))
        mods = items("modalities", ("id", "names", "sites"))
        targs = items("targets", ("id", "category", "meta", "synonyms", "descriptions", "modalities"))
        modalities = {m["id"]: Modality(m["id"], _strings(m["names"], f"modality {m['id']!r} names"),
                                        _strings(m["sites"], f"modality {m['id']!r} sites")) for m in mods}
        targets = {}
        for t in targs:
            where = f"target {t['id']!r}"
            for key in ("category", "meta"):
                if not isinstance(t[key], str):
                    raise InputError(f"{where} {key}: got {describe(t[key])}; expected a str")
            targets[t["id"]] = Target(t["id"], t["category"], t["meta"],
                                      _strings(t["synonyms"], f"{where} synonyms", nonempty=False),
                                      _strings(t["descriptions"], f"{where} descriptions", nonempty=False),
                                      _strings(t["modalities"], f"{where} modalities", nonempty=False))
        for key, n in (("meta_types", len(metas)), ("modalities", len(modalities)), ("targets", len(targets))):
            ids = [m["id"] for m in data[key]]
            if len(set(ids)) != len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise InputError(f"{key}: id {dup!r} appears more than once; expected unique ids")
        return cls(categories=_strings(data["categories"], "categories"),
                   meta_types=tuple(m["id"] for m in metas),
                   meta_categories={m["id"]: m["category"] for m in metas},
                   targets=targets, modalities=modalities,
                   templates=_strings(data["templates"], "templates"))

    def to_dict(self) -> dict:
        """The JSON form read by :meth:`from_dict` and :func:`load_ontology`.

        Returns
        -------
        dict
            JSON-able dictionary.

        Examples
        --------
        >>> sorted(load_ontology().to_dict())
        ['categories', 'format', 'meta_types', 'modalities', 'targets', 'templates', 'version']
        """
        return {
            "format": "biomip.data.ontology", "version": 1,
            "categories": list(self.categories),
            "meta_types": [{"id": m, "category": self.meta_categories.get(m)} for m in self.meta_types],
            "modalities": [{"id": m.id, "names": list(m.names), "sites": list(m.sites)}
                           for m in self.modalities.values()],
            "targets": [{"id": t.id, "category": t.category, "meta": t.meta, "synonyms": list(t.synonyms),
                         "descriptions": list(t.descriptions), "modalities": list(t.modalities)}
                        for t in self.targets.values()],
            "templates": list(self.templates),
        }

    # ------------------------------------------------------------------ checks
    def validate(self) -> Ontology:
        """Check that the ontology is consistent and that prompts parse back unambiguously.

        Checked: unique categories / meta types; each meta type's category exists; each
        target's category exists and is its meta type's; each target has at least 3
        synonyms and 1 description and occurs in known modalities; every modality has a
        name and a site; no normalised phrase (name or description) belongs to two
        targets, and no modality name to two modalities; no target phrase contains a
        modality name and no modality name a target phrase; no description contains a
        name of another target; no site and no template text contains a target phrase or
        a modality name; every template is a format string with exactly one of
        ``{target}`` / ``{description}`` and only the fields ``{site}`` and
        ``{modality}`` besides.

        Returns
        -------
        Ontology
            ``self``, so that ``ont = Ontology(...).validate()`` works.

        Raises
        ------
        InputError
            On the first inconsistency found, naming it.

        Examples
        --------
        >>> load_ontology().validate().meta_types[0]
        'abdominal organ'
        """
        for what, seq in (("categories", self.categories), ("meta_types", self.meta_types)):
            if not seq or len(set(seq)) != len(seq):
                raise InputError(f"{what}: got {list(seq)}; expected a non-empty list of unique names")
        for m in self.meta_types:
            if self.meta_categories.get(m) not in self.categories:
                raise InputError(f"meta type {m!r}: category {self.meta_categories.get(m)!r} is not one of "
                                 f"{list(self.categories)}")
        if not self.targets:
            raise InputError("targets: got none; expected at least one target")
        if not self.templates:
            raise InputError("templates: got none; expected at least one template")
        for m in self.modalities.values():
            if not m.names or not m.sites:
                raise InputError(f"modality {m.id!r}: expected at least one name and one site")
        for t in self.targets.values():
            where = f"target {t.id!r}"
            if t.category not in self.categories:
                raise InputError(f"{where}: category {t.category!r} is not one of {list(self.categories)}")
            if t.meta not in self.meta_types:
                raise InputError(f"{where}: meta type {t.meta!r} is not one of {list(self.meta_types)}")
            if self.meta_categories[t.meta] != t.category:
                raise InputError(f"{where}: category {t.category!r} differs from that of its meta type {t.meta!r} "
                                 f"({self.meta_categories[t.meta]!r})")
            if len(t.synonyms) < 3:
                raise InputError(f"{where}: got {len(t.synonyms)} synonym(s); expected at least 3")
            if len(t.descriptions) < 1:
                raise InputError(f"{where}: got no description; expected at least 1")
            unknown = [m for m in t.modalities if m not in self.modalities]
            if unknown:
                raise InputError(f"{where}: modality {unknown[0]!r} is not one of {list(self.modalities)}")
        # phrase tables (raise on empty phrases and on phrases shared by two owners)
        target_phrases = self._phrases("target")
        modality_phrases = self._phrases("modality")
        for phrase, tid in target_phrases.items():
            for mphrase in modality_phrases:
                if _contains(phrase, mphrase):
                    raise InputError(f"target {tid!r}: {' '.join(phrase)!r} contains the modality name "
                                     f"{' '.join(mphrase)!r}; a prompt with it would be ambiguous")
        for mphrase, mid in modality_phrases.items():
            for phrase in target_phrases:
                if _contains(mphrase, phrase):
                    raise InputError(f"modality {mid!r}: name {' '.join(mphrase)!r} contains the target phrase "
                                     f"{' '.join(phrase)!r}")
        names = {split_words(n): t.id for t in self.targets.values() for n in t.names}
        for t in self.targets.values():
            for d in t.descriptions:
                words = split_words(d)
                for phrase, owner in names.items():
                    if owner != t.id and _contains(words, phrase):
                        raise InputError(f"target {t.id!r}: description {d!r} contains {' '.join(phrase)!r}, "
                                         f"a name of {owner!r}")
        context = [(f"modality {m.id!r} site {s!r}", split_words(s)) for m in self.modalities.values()
                   for s in m.sites]
        for i, template in enumerate(self.templates):
            _template_fields(template, f"templates[{i}]")
            for literal, *_ in string.Formatter().parse(template):
                context.append((f"templates[{i}] {template!r}", split_words(literal)))
        for where, words in context:
            for phrase in (*target_phrases, *modality_phrases):
                if _contains(words, phrase):
                    raise InputError(f"{where}: contains {' '.join(phrase)!r}, a target or modality phrase; "
                                     "prompts with it would be ambiguous")
        return self

    def _phrases(self, kind: str) -> dict[tuple[str, ...], str]:
        table: dict[tuple[str, ...], str] = {}
        owners = ([(t.id, (*t.names, *t.descriptions)) for t in self.targets.values()] if kind == "target"
                  else [(m.id, m.names) for m in self.modalities.values()])
        for owner, texts in owners:
            for text in texts:
                phrase = split_words(text)
                if not phrase:
                    raise InputError(f"{kind} {owner!r}: {text!r} has no letter or digit")
                other = table.setdefault(phrase, owner)
                if other != owner:
                    raise InputError(f"{kind} {owner!r}: {text!r} (normalised {' '.join(phrase)!r}) also names "
                                     f"{kind} {other!r}; expected unambiguous names")
        return table

    # ------------------------------------------------------------------ queries
    def _target(self, target) -> Target:
        if not isinstance(target, str) or target not in self.targets:
            raise InputError(f"target: got {describe(target)}; expected one of {list(self.targets)}")
        return self.targets[target]

    def _modality(self, modality) -> Modality:
        if not isinstance(modality, str) or modality not in self.modalities:
            raise InputError(f"modality: got {describe(modality)}; expected one of {list(self.modalities)}")
        return self.modalities[modality]

    def targets_of(self, modality: str) -> tuple[str, ...]:
        """Ids of the targets that occur in a modality, in ontology order.

        Parameters
        ----------
        modality : str
            A modality id.

        Returns
        -------
        tuple of str
            Target ids.

        Raises
        ------
        InputError
            For an unknown modality.

        Examples
        --------
        >>> load_ontology().targets_of("fluorescence")
        ('nuclei', 'cytoplasm')
        """
        self._modality(modality)
        return tuple(t.id for t in self.targets.values() if modality in t.modalities)

    def meta_index(self, target: str) -> int:
        """Index of a target's meta type in :attr:`meta_types` (class label of a meta-type classifier).

        Parameters
        ----------
        target : str
            A target id.

        Returns
        -------
        int
            ``meta_types.index(targets[target].meta)``.

        Raises
        ------
        InputError
            For an unknown target.

        Examples
        --------
        >>> load_ontology().meta_index("liver")
        0
        """
        return self.meta_types.index(self._target(target).meta)

    def texts(self) -> list[str]:
        """Every text prompts are made of, for building a word vocabulary.

        Returns
        -------
        list of str
            Categories, meta types, target names and descriptions, modality names and
            sites, and the literal text of the templates (fields removed), in ontology
            order (deterministic).

        Examples
        --------
        >>> texts = load_ontology().texts()
        >>> "tumour" in texts, "segment the  in this   image" in texts
        (True, True)
        """
        out = [*self.categories, *self.meta_types]
        for t in self.targets.values():
            out += [*t.names, *t.descriptions]
        for m in self.modalities.values():
            out += [*m.names, *m.sites]
        out += ["".join(literal for literal, *_ in string.Formatter().parse(tpl)) for tpl in self.templates]
        return out

    # ------------------------------------------------------------------ prompts
    def prompt(self, target: str, modality: str, site: str | None = None, seed: int = 0, rng=None,
               kind: str = "any") -> str:
        """A text prompt naming ``target`` in ``modality``.

        ``"canonical"`` gives BiomedParse's form with the primary names,
        ``"{target} in {site} {modality}"`` (``"tumor in breast ultrasound"``).  The
        other kinds draw a template at random (``"template"``: one with ``{target}``;
        ``"description"``: one with ``{description}``; ``"any"``: any template, uniformly)
        and fill it with a random name (or description) of the target, a random name of
        the modality and, unless ``site`` is given, a random site of the modality.  The
        target need not occur in the modality (prompts for absent targets are how a
        model learns to reject invalid prompts).

        Parameters
        ----------
        target : str
            A target id.
        modality : str
            A modality id.
        site : str or None, optional
            Site text; ``None``: the modality's primary site for ``"canonical"``, a
            random one of its sites otherwise.
        seed : int, optional
            Seed of the random choices (used when ``rng`` is ``None``).
        rng : numpy.random.Generator or None, optional
            Generator to draw from (advanced by the call); overrides ``seed``.
        kind : {"any", "template", "description", "canonical"}, optional
            Which prompts to draw from.

        Returns
        -------
        str
            The prompt.

        Raises
        ------
        InputError
            For an unknown target, modality or kind, or a kind with no template.

        Examples
        --------
        >>> ont = load_ontology()
        >>> ont.prompt("grey matter", "mri", kind="canonical")
        'grey matter in brain MRI'
        >>> ont.prompt("tumor", "ultrasound", seed=3) == ont.prompt("tumor", "ultrasound", seed=3)
        True
        >>> ont.parse(ont.prompt("cyst", "ct", seed=7, kind="description"))
        {'target': 'cyst', 'modality': 'ct'}
        """
        t = self._target(target)
        m = self._modality(modality)
        if kind not in PROMPT_KINDS:
            raise InputError(f"kind: got {kind!r}; expected one of {list(PROMPT_KINDS)}")
        if site is not None and (not isinstance(site, str) or not site.strip()):
            raise InputError(f"site: got {describe(site)}; expected a non-empty str or None")
        if kind == "canonical":
            return f"{t.id} in {site if site is not None else m.sites[0]} {m.names[0]}"
        if rng is None:
            rng = np.random.default_rng(check_number(seed, "seed", integer=True, low=0))
        elif not isinstance(rng, np.random.Generator):
            raise InputError(f"rng: got {describe(rng)}; expected a numpy.random.Generator or None")
        pool = {"any": self.templates, "template": self._by_field["target"],
                "description": self._by_field["description"]}[kind]
        if not pool:
            raise InputError(f"kind: got {kind!r} but the ontology has no such template")
        template = pool[int(rng.integers(len(pool)))]
        if "{description}" in template and not t.descriptions:
            raise InputError(f"target: {t.id!r} has no description for a description template")
        values = {"target": t.names[int(rng.integers(len(t.names)))],
                  "description": t.descriptions[int(rng.integers(len(t.descriptions)))] if t.descriptions else "",
                  "modality": m.names[int(rng.integers(len(m.names)))],
                  "site": site if site is not None else m.sites[int(rng.integers(len(m.sites)))]}
        return " ".join(template.format(**values).split())

    @cached_property
    def _by_field(self) -> dict[str, tuple[str, ...]]:
        return {f: tuple(t for t in self.templates if "{" + f + "}" in t) for f in ("target", "description")}

    @cached_property
    def _index(self):
        tables = (self._phrases("target"), self._phrases("modality"))
        return tables, max(len(p) for table in tables for p in table)

    def parse(self, text: str) -> dict:
        """The target and modality a free-text prompt names.

        The text is split into normalised words (:func:`split_words`); every word
        sequence that equals a target's name or description (or a modality's name) is a
        match, and the longest match wins.  Ties follow English noun phrases: among the
        matches before the first preposition (``in``, ``on``, ``of``, ...) the last one is
        the head noun (``"liver tumour in CT"`` names the tumour, ``"kidney cyst"`` the
        cyst); when no match comes before a preposition, the earliest one wins
        (``"nuclei in the gland"``: nuclei).  Synonyms, plural forms the ontology lists,
        British spelling and punctuation are thus understood; a prompt that names no
        known target (or modality) gives ``None`` for it.  Site words are not parsed.

        Parameters
        ----------
        text : str
            The prompt.

        Returns
        -------
        dict
            ``{"target": id or None, "modality": id or None}``.

        Raises
        ------
        InputError
            When ``text`` is not a string.

        Examples
        --------
        >>> ont = load_ontology()
        >>> ont.parse("Gray matter, brain MR")
        {'target': 'grey matter', 'modality': 'mri'}
        >>> ont.parse("cell nuclei in H&E-stained colon")
        {'target': 'nuclei', 'modality': 'he'}
        >>> ont.parse("a cat on a sofa")
        {'target': None, 'modality': None}
        """
        words = split_words(text)
        (targets, modalities), longest = self._index
        stop = next((i for i, w in enumerate(words) if w in _PREPOSITIONS), len(words))
        out = {}
        for key, table in (("target", targets), ("modality", modalities)):
            found = []                                  # (length, start, owner)
            for i in range(len(words)):
                for n in range(min(longest, len(words) - i), 0, -1):
                    owner = table.get(words[i:i + n])
                    if owner is not None:
                        found.append((n, i, owner))
                        break
            if not found:
                out[key] = None
                continue
            n_max = max(f[0] for f in found)
            ties = [f for f in found if f[0] == n_max]
            head = [f for f in ties if f[1] + f[0] <= stop]
            out[key] = (head[-1] if head else ties[0])[2]
        return out


def load_ontology(path=None) -> Ontology:
    """Read an ontology: the one shipped with biomip, or a JSON file of the same form.

    Parameters
    ----------
    path : str or pathlib.Path or None, optional
        A JSON file (see :meth:`Ontology.from_dict` and ``biomip/data/ontology.json``);
        ``None``: the packaged ontology.

    Returns
    -------
    Ontology
        The ontology, validated (:meth:`Ontology.validate`).

    Raises
    ------
    InputError
        When the file cannot be read, is not JSON, or is not a valid ontology (the
        message names ``path``).

    Examples
    --------
    >>> ont = load_ontology()
    >>> len(ont.categories), sorted(ont.modalities)
    (3, ['ct', 'fluorescence', 'he', 'mri', 'ultrasound'])
    """
    if path is None:
        from importlib.resources import files

        source, label = files("biomip.data").joinpath("ontology.json"), "the packaged ontology.json"
    else:
        if not isinstance(path, (str, Path)):
            raise InputError(f"path: got {describe(path)}; expected a str, a pathlib.Path or None")
        source, label = Path(path), f"path {str(path)!r}"
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{label}: cannot be read ({err}); expected an ontology JSON file") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{label}: not valid JSON ({err}); expected an ontology JSON file") from None
    try:
        return Ontology.from_dict(data).validate()
    except InputError as err:
        raise InputError(f"{label}: not a valid ontology: {err}") from None
