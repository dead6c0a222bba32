"""An application's audience (``aud`` of its tokens, its cookie's name) is stored when the
panel or API creates or renames it, so a rename does not change it; ``apply`` keeps a stored
one when the file sets none, and refuses two applications sharing one (a token of one would
open the other); applications applied from a file keep the audience derived from their name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from zerogate.admin.service import Actor, AdminService, Invalid
from zerogate.model.loader import ConfigError, validate_objects
from zerogate.model.objects import Objects, default_audience
from zerogate.policy import compile_snapshot
from zerogate.runtime import audience_tag
from zerogate.store import Store, StoreError, storage_url

ME = Actor("ops@example.test", "192.0.2.1")


def app(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "domain": f"{name}.example.test",
        "origin": "http://10.0.0.5:8080",
        "policies": [{"name": "all", "decision": "allow", "include": [{"everyone": True}]}],
        **extra,
    }


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(storage_url(f"sqlite:///{tmp_path / 'zg.db'}"))
    try:
        yield opened
    finally:
        await opened.close()


def test_without_a_stored_audience_it_is_the_one_every_application_had() -> None:
    objects = Objects.model_validate({"applications": [app("wiki")]})
    (compiled,) = compile_snapshot(objects).apps.values()
    assert compiled.audience == default_audience("wiki") == audience_tag("wiki")
    assert len(compiled.audience) == 32


async def test_a_rename_in_the_panel_or_api_keeps_the_audience(store: Store) -> None:
    service = AdminService(store)
    created = await service.create("applications", app("wiki"), ME)
    assert created.spec["audience"] == default_audience("wiki"), "stored at creation"
    renamed = await service.update(
        "applications", "wiki", {**app("wiki"), "name": "docs"}, version=created.version, actor=ME
    )
    assert renamed.name == "docs" and renamed.spec["audience"] == default_audience("wiki")
    objects, _ = await store.load()
    (compiled,) = compile_snapshot(objects).apps.values()
    assert compiled.name == "docs" and compiled.audience == default_audience("wiki")
    # an edit whose form does not carry the audience keeps it too
    edited = await service.update(
        "applications",
        "docs",
        {**app("docs"), "domain": "docs2.example.test"},
        version=renamed.version,
        actor=ME,
    )
    assert edited.spec["audience"] == default_audience("wiki")


async def test_apply_keeps_a_stored_audience_and_refuses_a_shared_one(store: Store) -> None:
    kept = "ab" * 16
    await store.apply(
        Objects.model_validate({"applications": [app("docs", audience=kept)]}), actor="t"
    )
    # the file does not say: the stored audience stays, and nothing changes
    plan = await store.plan(Objects.model_validate({"applications": [app("docs")]}))
    assert not plan.changes
    await store.apply(Objects.model_validate({"applications": [app("docs")]}), actor="t")
    objects, _ = await store.load()
    assert objects.applications[0].audience == kept
    # renamed away from "wiki" (keeping wiki's audience), a new "wiki" would share it
    await store.apply(
        Objects.model_validate({"applications": [app("docs", audience=default_audience("wiki"))]}),
        actor="t",
    )
    both = Objects.model_validate({"applications": [app("docs"), app("wiki")]})
    with pytest.raises(StoreError, match="'docs' and 'wiki' would share the audience"):
        await store.apply(both, actor="t")
    objects, _ = await store.load()
    assert [a.name for a in objects.applications] == ["docs"], "nothing was written"


def test_two_applications_cannot_name_the_same_audience() -> None:
    same = "cd" * 16
    with pytest.raises(ConfigError, match=r"the audience 'cdcd.*' is application 'a'"):
        validate_objects({"applications": [app("a", audience=same), app("b", audience=same)]})
    with pytest.raises(ConfigError, match="audience"):
        validate_objects({"applications": [app("a", audience="not-hex")]})


async def test_the_api_refuses_a_new_application_with_a_taken_audience(store: Store) -> None:
    service = AdminService(store)
    await service.create("applications", app("wiki"), ME)
    with pytest.raises(Invalid):
        await service.create("applications", app("docs", audience=default_audience("wiki")), ME)
