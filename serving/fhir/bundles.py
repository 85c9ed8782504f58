"""Bundle handling: the resources of a Bundle (nested Bundles included) or of a list, each once,
and whether one is a hetrombopag order."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from serving.fhir.codes import INDEX_DRUG, FhirError, concept_text, drugs_in_text
from serving.fhir.shapes import shape_problem

BUNDLE_TYPES = frozenset({"collection", "searchset", "transaction", "batch", "document"})


def reference_of(resource: Mapping[str, Any], full_url: str | None) -> str:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return f"{resource['resourceType']}/{rid}"
    return full_url or f"{resource['resourceType']}/(no id)"


@dataclass
class Item:
    resource: dict[str, Any]
    ref: str
    full_url: str | None


def is_fhir(obj: Any) -> bool:
    """Whether `obj` looks like FHIR JSON: a resource (has `resourceType`) or a list of them."""
    if isinstance(obj, dict):
        return isinstance(obj.get("resourceType"), str)
    if isinstance(obj, list) and obj:
        return all(isinstance(r, dict) and isinstance(r.get("resourceType"), str) for r in obj)
    return False


def _walk(obj: Any, where: str) -> Iterator[Item]:
    if not isinstance(obj, dict) or not isinstance(obj.get("resourceType"), str):
        raise FhirError(f"{where}: not a FHIR resource (no resourceType)")
    if obj["resourceType"] != "Bundle":
        yield Item(obj, reference_of(obj, None), None)
        return
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in BUNDLE_TYPES:
        raise FhirError(
            f"{where}: Bundle.type {kind!r} is not supported; expected one of "
            + ", ".join(sorted(BUNDLE_TYPES))
        )
    entries = obj.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError(f"{where}.entry: must be a list")
    for i, entry in enumerate(entries):
        at = f"{where}.entry[{i}]"
        if not isinstance(entry, dict):
            raise FhirError(f"{at}: must be an object")
        resource = entry.get("resource")
        if resource is None:
            continue  # a transaction entry may carry only a request (e.g. DELETE)
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            yield from _walk(resource, f"{at}.resource")
            continue
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirError(f"{at}.resource: not a FHIR resource (no resourceType)")
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        yield Item(resource, reference_of(resource, full_url), full_url)


def collect(obj: Any) -> list[Item]:
    if isinstance(obj, list):
        items = [item for i, r in enumerate(obj) for item in _walk(r, f"[{i}]")]
    elif isinstance(obj, dict):
        items = list(_walk(obj, obj.get("resourceType", "input")))
    else:
        raise FhirError("input: expected a FHIR resource, a Bundle or a list of resources")
    seen: set[str] = set()
    unique = []
    for item in items:
        if item.ref in seen and not item.ref.endswith("(no id)"):
            continue  # the same resource twice (prefetch and fetch, or nested bundles)
        seen.add(item.ref)
        unique.append(item)
    return unique


def resources_in(obj: Any) -> list[dict[str, Any]]:
    """Every resource of a Bundle (nested Bundles included) or list, each once.

    Raises:
        FhirError: the input is not FHIR.
    """
    return [item.resource for item in collect(obj)]


def is_index_order(
    resource: Mapping[str, Any], statuses: Iterable[str] = ("draft", "active")
) -> bool:
    """Whether a resource is a hetrombopag MedicationRequest with one of `statuses`."""
    if resource.get("resourceType") != "MedicationRequest" or resource.get("status") not in set(
        statuses
    ):
        return False
    if shape_problem(resource) is not None:
        return False
    concepts = [resource.get("medicationCodeableConcept") or {}]
    concepts += [
        c.get("code") or {}
        for c in resource.get("contained") or []
        if c.get("resourceType") == "Medication" and shape_problem(c) is None
    ]
    return any(INDEX_DRUG in drugs_in_text(concept_text(c)) for c in concepts)
