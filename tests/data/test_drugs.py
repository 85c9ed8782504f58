"""Drug names to classes: the shipped table covers the breast-cancer agents and their aliases."""

import csv

import pytest

from data import drugs

DESIGN_CLASSES = (
    "platinum",
    "gemcitabine",
    "anthracycline",
    "taxane",
    "antimetabolite",
    "alkylator",
    "vinca",
    "eribulin",
    "adc",
    "cdk46",
    "parp",
    "anti_her2",
    "endocrine",
    "immunotherapy",
)

# Name as a clinician may write it -> (generic name, classes), by hand.
EXPECTED = [
    ("T-DM1", "trastuzumab emtansine", ("adc", "anti_her2")),
    ("trastuzumab emtansine", "trastuzumab emtansine", ("adc", "anti_her2")),
    ("ado-trastuzumab emtansine", "trastuzumab emtansine", ("adc", "anti_her2")),
    ("Kadcyla", "trastuzumab emtansine", ("adc", "anti_her2")),
    ("T-DXd", "trastuzumab deruxtecan", ("adc", "anti_her2")),
    ("trastuzumab deruxtecan", "trastuzumab deruxtecan", ("adc", "anti_her2")),
    ("Enhertu", "trastuzumab deruxtecan", ("adc", "anti_her2")),
    ("sacituzumab govitecan", "sacituzumab govitecan", ("adc",)),
    ("Trodelvy", "sacituzumab govitecan", ("adc",)),
    ("capecitabine", "capecitabine", ("antimetabolite",)),
    ("Xeloda", "capecitabine", ("antimetabolite",)),
    ("cyclophosphamide", "cyclophosphamide", ("alkylator",)),
    ("temozolomide", "temozolomide", ("alkylator",)),
    ("gemcitabine", "gemcitabine", ("gemcitabine",)),
    ("cisplatin", "cisplatin", ("platinum",)),
    ("carboplatin", "carboplatin", ("platinum",)),
    ("oxaliplatin", "oxaliplatin", ("platinum",)),
    ("doxorubicin", "doxorubicin", ("anthracycline",)),
    ("epirubicin", "epirubicin", ("anthracycline",)),
    ("paclitaxel", "paclitaxel", ("taxane",)),
    ("Abraxane", "nab-paclitaxel", ("taxane",)),
    ("docetaxel", "docetaxel", ("taxane",)),
    ("5-FU", "fluorouracil", ("antimetabolite",)),
    ("cytarabine", "cytarabine", ("antimetabolite",)),
    ("vinorelbine", "vinorelbine", ("vinca",)),
    ("Halaven", "eribulin", ("eribulin",)),
    ("palbociclib", "palbociclib", ("cdk46",)),
    ("Kisqali", "ribociclib", ("cdk46",)),
    ("abemaciclib", "abemaciclib", ("cdk46",)),
    ("olaparib", "olaparib", ("parp",)),
    ("talazoparib", "talazoparib", ("parp",)),
    ("Herceptin", "trastuzumab", ("anti_her2",)),
    ("pertuzumab", "pertuzumab", ("anti_her2",)),
    ("pyrotinib", "pyrotinib", ("anti_her2",)),
    ("tucatinib", "tucatinib", ("anti_her2",)),
    ("tamoxifen", "tamoxifen", ("endocrine",)),
    ("letrozole", "letrozole", ("endocrine",)),
    ("anastrozole", "anastrozole", ("endocrine",)),
    ("exemestane", "exemestane", ("endocrine",)),
    ("fulvestrant", "fulvestrant", ("endocrine",)),
    ("goserelin", "goserelin", ("endocrine",)),
    ("Keytruda", "pembrolizumab", ("immunotherapy",)),
    ("atezolizumab", "atezolizumab", ("immunotherapy",)),
    ("toripalimab", "toripalimab", ("immunotherapy",)),
]


def test_class_ids_are_those_of_design_in_order() -> None:
    assert drugs.DRUG_CLASSES == DESIGN_CLASSES


@pytest.mark.parametrize(("name", "generic", "classes"), EXPECTED)
def test_names_map_to_generic_and_classes(
    name: str, generic: str, classes: tuple[str, ...]
) -> None:
    assert drugs.normalise_drug(name) == generic
    assert drugs.classes_of(name) == classes
    assert drugs.is_known(name)


def test_case_spaces_and_unicode_dashes_do_not_matter() -> None:
    assert drugs.normalise_drug("  Ado\u2013Trastuzumab   EMTANSINE ") == "trastuzumab emtansine"
    assert drugs.classes_of("t\u2011dxd") == ("adc", "anti_her2")


def test_unknown_drug_has_no_class_and_is_returned_cleaned() -> None:
    assert drugs.normalise_drug("  Wonderdrug  X ") == "wonderdrug x"
    assert drugs.classes_of("wonderdrug") == ()
    assert not drugs.is_known("wonderdrug")


def test_known_drug_without_one_of_the_classes() -> None:
    assert drugs.is_known("everolimus")
    assert drugs.classes_of("Afinitor") == ()


def test_every_class_has_a_drug_and_the_table_uses_only_known_classes() -> None:
    text = drugs.DRUG_TABLE.read_text(encoding="utf-8")
    rows = list(csv.DictReader(text.splitlines()))
    used = {c for row in rows for c in row["classes"].split(";") if c}
    assert used == set(DESIGN_CLASSES)
    generics = [row["drug"] for row in rows]
    assert len(generics) == len(set(generics))
    assert all(row["drug"] == row["drug"].strip().lower() for row in rows)


def test_aliases_are_unambiguous() -> None:
    aliases = drugs.drug_aliases()
    for generic in drugs.known_drugs():
        assert aliases[generic] == generic
    # Each alias resolves to one generic name whose classes it shares.
    for alias, generic in aliases.items():
        assert drugs.classes_of(alias) == drugs.classes_of(generic)


def test_known_drugs_is_sorted_generic_names() -> None:
    names = drugs.known_drugs()
    assert names == sorted(names)
    assert "trastuzumab deruxtecan" in names
    assert "t-dxd" not in names
