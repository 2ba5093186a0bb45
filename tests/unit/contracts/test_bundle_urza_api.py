"""The kernel bundle manifest and Urza's API bodies."""

import json

import pytest
from pydantic import ValidationError

from esper.contracts.bundle import (
    BUNDLE_FORMAT,
    REQUIRED_MEMBERS,
    BundleMemberName,
    KernelBundleManifest,
)
from esper.contracts.urza_api import MAX_PAGE_SIZE, ArtifactLink, BlueprintPage, PhaseChange

from .samples import BUNDLE_SHA, blueprint_record, bundle_manifest, bundle_member


def test_manifest_defaults_and_lookup() -> None:
    manifest = bundle_manifest("aoti.pt2")
    assert manifest.format == BUNDLE_FORMAT == "esper.dev/kernel-bundle/v1"
    assert manifest.member(BundleMemberName.AOTI_PACKAGE) == bundle_member("aoti.pt2")
    assert manifest.member(BundleMemberName.COMPILE_CACHE) is None
    assert json.loads(manifest.to_json())["format"] == BUNDLE_FORMAT


def test_required_members() -> None:
    assert {name.value for name in REQUIRED_MEMBERS} == {
        "ir.json",
        "weights.safetensors",
        "module.pt2",
    }


@pytest.mark.parametrize("missing", sorted(name.value for name in REQUIRED_MEMBERS))
def test_manifest_needs_every_required_member(missing: str) -> None:
    document = bundle_manifest().model_dump(by_alias=False)
    document["members"] = [item for item in document["members"] if item["name"] != missing]
    with pytest.raises(ValidationError, match=f"bundle lacks required member\\(s\\): {missing}"):
        KernelBundleManifest.model_validate(document)


def test_manifest_names_every_missing_member() -> None:
    document = bundle_manifest().model_dump(by_alias=False)
    document["members"] = [bundle_member("compile_cache.bin").model_dump()]
    with pytest.raises(ValidationError, match=r"ir\.json, module\.pt2, weights\.safetensors"):
        KernelBundleManifest.model_validate(document)


def test_manifest_members_are_listed_once() -> None:
    with pytest.raises(ValidationError, match="a bundle member is listed twice"):
        bundle_manifest("ir.json")


def test_manifest_does_not_list_itself() -> None:
    with pytest.raises(ValidationError, match="the manifest does not list itself"):
        bundle_manifest("manifest.json")


@pytest.mark.parametrize("name", ["model.pkl", "IR.json", "../ir.json"])
def test_only_known_members(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        bundle_member(name)


def test_manifest_format_is_fixed() -> None:
    document = json.loads(bundle_manifest().to_json()) | {"format": "esper.dev/kernel-bundle/v2"}
    with pytest.raises(ValidationError, match="format"):
        KernelBundleManifest.model_validate(document)


def test_page_size_is_bounded() -> None:
    with pytest.raises(ValidationError, match="items"):
        BlueprintPage(items=[blueprint_record()] * (MAX_PAGE_SIZE + 1))


@pytest.mark.parametrize("seconds", [0, 604801])
def test_artifact_link_expiry_is_bounded(seconds: int) -> None:
    with pytest.raises(ValidationError, match="expires_in_seconds"):
        ArtifactLink(url="u", sha256=BUNDLE_SHA, size_bytes=1, expires_in_seconds=seconds)


def test_phase_change_needs_a_known_phase() -> None:
    assert PhaseChange(phase="Failed", error="x").error == "x"
    with pytest.raises(ValidationError, match="phase"):
        PhaseChange(phase="Exploded")
