"""The target ontology of case study 1: consistency, prompts that parse back, prompt checks, bad files."""

import json

import numpy as np
import pytest

from biomip.core.errors import InputError
from biomip.data.ontology import (
    PROMPT_KINDS,
    Modality,
    Ontology,
    Target,
    check_prompt,
    load_ontology,
    split_words,
)

REQUIRED_TARGETS = ("liver", "kidney", "vessel", "tumor", "cyst", "ventricle", "grey matter", "nuclei", "cytoplasm",
                    "gland")
SITES = {"ct": "abdomen", "mri": "brain", "ultrasound": "breast", "fluorescence": "cell culture", "he": "colon"}


@pytest.fixture(scope="module")
def ont():
    return load_ontology()


# ----------------------------------------------------------------------------- content
def test_packaged_ontology_has_the_structure_other_code_relies_on(ont):
    assert ont.validate() is ont
    assert ont.categories == ("organ", "abnormality", "histology")
    assert 8 <= len(ont.meta_types) <= 10 and len(set(ont.meta_types)) == len(ont.meta_types)
    assert set(REQUIRED_TARGETS) <= set(ont.targets)
    assert {m: mod.sites[0] for m, mod in ont.modalities.items()} == SITES
    assert ont.modalities["ct"].names[0] == "CT" and "computed tomography" in ont.modalities["ct"].names
    for t in ont.targets.values():
        assert isinstance(t, Target) and t.names[0] == t.id
        assert len(t.synonyms) >= 3 and len(t.descriptions) >= 2
        assert t.modalities and set(t.modalities) <= set(ont.modalities)
        assert ont.meta_categories[t.meta] == t.category
        assert ont.meta_types[ont.meta_index(t.id)] == t.meta
    # some targets occur in no modality's images yet-to-be-generated: every modality has targets,
    # and the extra targets give prompts for absent objects
    assert all(ont.targets_of(m) for m in ont.modalities)
    assert len(ont.targets) > len(REQUIRED_TARGETS)
    assert ont.targets_of("fluorescence") == ("nuclei", "cytoplasm")
    # no normalised name is shared by two targets
    owners = {}
    for t in ont.targets.values():
        for n in t.names:
            assert owners.setdefault(split_words(n), t.id) == t.id


def test_dict_round_trip_and_texts(ont, tmp_path):
    assert Ontology.from_dict(ont.to_dict()) == ont
    path = tmp_path / "o.json"
    path.write_text(json.dumps(ont.to_dict()))
    assert load_ontology(path) == ont
    texts = ont.texts()
    words = {w for t in texts for w in split_words(t)}
    # every word of every prompt is in the vocabulary the texts give; no template field leaks in
    for seed in range(200):
        p = ont.prompt("tumor", "he", seed=seed)
        assert set(split_words(p)) <= words
    assert "{" not in "".join(texts)
    assert texts == load_ontology().texts()


def test_split_words():
    assert split_words("H&E") == ("h", "e")
    assert split_words("Fluid-filled  TUMOUR,") == ("fluid", "filled", "tumour")
    assert split_words("naïve Zürich") == ("naive", "zurich")
    with pytest.raises(InputError, match="text"):
        split_words(3)


# ----------------------------------------------------------------------------- prompts
def test_every_template_name_and_site_parses_back(ont):
    # exhaustive: every template x every name / description x every modality name x every site
    n = 0
    for tpl in ont.templates:
        for t in ont.targets.values():
            for fill in (t.names if "{target}" in tpl else t.descriptions):
                for m in ont.modalities.values():
                    for name in m.names:
                        for site in m.sites:
                            text = tpl.format(target=fill, description=fill, modality=name, site=site)
                            expected = {"target": t.id, "modality": m.id if "{modality}" in tpl else None}
                            assert ont.parse(text) == expected, text
                            n += 1
    assert n > 10_000


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_random_prompts_parse_back_and_are_seeded(ont, kind):
    rng = np.random.default_rng(0)
    seen, with_modality = set(), 0
    for target in ont.targets:
        for modality in ont.modalities:
            for seed in range(12):
                p = ont.prompt(target, modality, seed=seed, kind=kind)
                assert p == ont.prompt(target, modality, seed=seed, kind=kind)
                assert check_prompt(p) == p
                parsed = ont.parse(p)
                assert parsed["target"] == target, p
                assert parsed["modality"] in (modality, None), p
                with_modality += parsed["modality"] == modality
                seen.add(p)
                q = ont.prompt(target, modality, rng=rng, kind=kind)
                assert ont.parse(q)["target"] == target
    total = len(ont.targets) * len(ont.modalities) * 12
    if kind == "canonical":
        assert len(seen) == len(ont.targets) * len(ont.modalities) and with_modality == total
    else:
        assert len(seen) > total // 3          # prompts vary with the seed
        assert with_modality > total // 2      # most templates name the modality


def test_prompt_kinds_and_canonical_form(ont):
    assert ont.prompt("tumor", "ultrasound", kind="canonical") == "tumor in breast ultrasound"
    assert ont.prompt("nuclei", "he", kind="canonical") == "nuclei in colon H&E pathology"
    assert ont.prompt("liver", "ct", site="upper abdomen", kind="canonical") == "liver in upper abdomen CT"
    descs = set(ont.targets["cyst"].descriptions)
    with_site = 0
    for seed in range(30):
        p = ont.prompt("cyst", "ct", seed=seed, kind="description")
        assert any(d in p for d in descs)
        p = ont.prompt("cyst", "ct", seed=seed, kind="template", site="pelvis")
        assert not any(d in p for d in descs)
        assert not any(s in p for s in ont.modalities["ct"].sites)   # the given site replaces the modality's
        with_site += "pelvis" in p
    assert with_site > 5
    # a target absent from a modality still gets prompts (invalid-prompt training)
    assert "cytoplasm" not in ont.targets_of("ct")
    assert ont.parse(ont.prompt("cytoplasm", "ct", seed=1))["target"] == "cytoplasm"


def test_parse_free_text(ont):
    assert ont.parse("Please segment the TUMOURS on this breast sonogram.")["target"] == "tumor"
    assert ont.parse("lateral ventricles, T1 MR") == {"target": "ventricle", "modality": "mri"}
    assert ont.parse("cell nuclei in H & E colon") == {"target": "nuclei", "modality": "he"}
    assert ont.parse("cerebral white matter") == {"target": "white matter", "modality": None}
    assert ont.parse("kidney cyst in CT") == {"target": "cyst", "modality": "ct"}   # tie: the head noun
    assert ont.parse("liver tumour in abdomen CT")["target"] == "tumor"
    assert ont.parse("tumor in the liver")["target"] == "tumor"
    assert ont.parse("nuclei of the gland, H&E")["target"] == "nuclei"
    assert ont.parse("") == {"target": None, "modality": None}


def test_prompt_bad_arguments(ont):
    with pytest.raises(InputError, match="target: got str 'spleens'"):
        ont.prompt("spleens", "ct")
    with pytest.raises(InputError, match="modality"):
        ont.prompt("liver", "pet")
    with pytest.raises(InputError, match="kind"):
        ont.prompt("liver", "ct", kind="fancy")
    with pytest.raises(InputError, match="rng"):
        ont.prompt("liver", "ct", rng=np.random.RandomState(0))
    with pytest.raises(InputError, match="site"):
        ont.prompt("liver", "ct", site="  ")
    with pytest.raises(InputError, match="target"):
        ont.meta_index("lungs")
    with pytest.raises(InputError, match="modality"):
        ont.targets_of("CT")


# ----------------------------------------------------------------------------- prompt checks
def test_check_prompt():
    assert check_prompt("  tumor \n in\tbreast  ultrasound ") == "tumor in breast ultrasound"
    assert check_prompt("ﬁbrous mass") == "fibrous mass"     # NFKC
    assert check_prompt("x " * 32) == ("x " * 32).strip()
    for bad, match in (("", "empty"), ("  \t\n", "empty"), ("?! ...", "no letter"), (None, "NoneType"),
                       (b"liver", "bytes"), ("x " * 33, "33 words")):
        with pytest.raises(InputError, match=match) as err:
            check_prompt(bad)
        assert str(err.value).startswith("prompt")
    assert check_prompt("a b c", max_words=3) == "a b c"
    with pytest.raises(InputError, match="at most 2 words"):
        check_prompt("a b c", max_words=2)
    with pytest.raises(InputError, match="max_words"):
        check_prompt("a", max_words=0)


# ----------------------------------------------------------------------------- bad ontologies
def _edit(ont, **change):
    d = ont.to_dict()
    d.update(change)
    return d


def test_validate_catches_inconsistencies(ont):
    d = ont.to_dict()
    cases = []
    few = json.loads(json.dumps(d))
    few["targets"][0]["synonyms"] = few["targets"][0]["synonyms"][:2]
    cases.append((few, "at least 3"))
    nodesc = json.loads(json.dumps(d))
    nodesc["targets"][1]["descriptions"] = []
    cases.append((nodesc, "no description"))
    shared = json.loads(json.dumps(d))
    shared["targets"][0]["synonyms"].append("Tumour")          # 'tumour' belongs to tumor
    cases.append((shared, "'tumour'.* also names target 'liver'"))
    badmod = json.loads(json.dumps(d))
    badmod["targets"][2]["modalities"].append("pet")
    cases.append((badmod, "'pet' is not one of"))
    badmeta = json.loads(json.dumps(d))
    badmeta["targets"][0]["meta"] = "neoplasm"                  # liver (organ) under an abnormality type
    cases.append((badmeta, "differs from that of its meta type"))
    leak = json.loads(json.dumps(d))
    leak["targets"][0]["descriptions"].append("organ next to the kidney")
    cases.append((leak, "a name of 'kidney'"))
    modname = json.loads(json.dumps(d))
    modname["targets"][3]["synonyms"].append("CT mass")
    cases.append((modname, "contains the modality name"))
    tpl = json.loads(json.dumps(d))
    tpl["templates"].append("{target} and {description}")
    cases.append((tpl, "exactly one of"))
    tpl2 = json.loads(json.dumps(d))
    tpl2["templates"].append("{target} in {organ}")
    cases.append((tpl2, "only the fields"))
    tpl3 = json.loads(json.dumps(d))
    tpl3["templates"].append("the liver and the {target}")
    cases.append((tpl3, "templates\\[11\\].*'liver'"))
    site = json.loads(json.dumps(d))
    site["modalities"][0]["sites"].append("liver")
    cases.append((site, "site 'liver'"))
    for data, match in cases:
        with pytest.raises(InputError, match=match):
            Ontology.from_dict(data).validate()


def test_load_ontology_bad_files(tmp_path, ont):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputError, match="nope.json.*cannot be read"):
        load_ontology(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="broken.json.*not valid JSON"):
        load_ontology(broken)
    for i, (data, match) in enumerate([([1, 2], "expected a mapping"), ({"categories": []}, "missing key"),
                                       (_edit(ont, targets="liver"), "targets: got str"),
                                       (_edit(ont, templates=[]), "at least one string"),
                                       (_edit(ont, meta_types=[{"id": "x"}]), "meta_types\\[0\\]")]):
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(InputError, match=f"bad{i}.json.*{match}"):
            load_ontology(path)
    dup = ont.to_dict()
    dup["targets"].append(dict(dup["targets"][0]))
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(dup))
    with pytest.raises(InputError, match="dup.json.*'liver' appears more than once"):
        load_ontology(path)
    with pytest.raises(InputError, match="path"):
        load_ontology(3)


def test_dataclasses_are_frozen(ont):
    with pytest.raises(AttributeError):
        ont.targets["liver"].id = "x"
    with pytest.raises(TypeError):
        ont.targets["x"] = Target("x", "organ", "abdominal organ", (), (), ())
    assert isinstance(ont.modalities["mri"], Modality)
