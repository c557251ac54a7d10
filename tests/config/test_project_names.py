"""The project-name rule: a name must read as text in Hydra's defaults list and must not
differ from another project's only by case (one file on a Mac or Windows checkout)."""

import pytest

from backfill.config.errors import UserError
from backfill.config.project import compose
from backfill.projects.discover import project_name
from backfill.projects.registry import add_project, registered


@pytest.fixture
def folders(tmp_path):
    for name in ("orig", "final"):
        (tmp_path / name).mkdir()
    return str(tmp_path / "orig"), str(tmp_path / "final")


@pytest.mark.parametrize("name", ["123", "1_000", "0x1F", "2024-01-01", "yes", "null"])
def test_a_name_yaml_reads_as_no_text_is_refused_with_the_rule(repo_copy, folders, name):
    before = (repo_copy / "conf" / "config.yaml").read_text()
    with pytest.raises(UserError) as caught:
        add_project(repo_copy, name, *folders)
    message = str(caught.value)
    assert "letters, digits" in message and "number" in message and "\n" not in message
    assert "Unsupported" not in message
    assert (repo_copy / "conf" / "config.yaml").read_text() == before
    assert not (repo_copy / "conf" / "project" / f"{name}.yaml").exists()


def test_a_name_that_differs_only_by_case_is_refused(repo_copy, folders):
    add_project(repo_copy, "demo", *folders)
    with pytest.raises(UserError, match="differs from project 'demo' only by case"):
        add_project(repo_copy, "DEMO", *folders)
    assert registered(repo_copy) == ["demo"]
    add_project(repo_copy, "demo2", *folders)  # a name of its own is fine


def test_compose_refuses_such_names_registered_by_hand(repo_copy, folders):
    add_project(repo_copy, "demo", *folders)
    cfg = repo_copy / "conf" / "config.yaml"
    good = cfg.read_text()
    conf = (repo_copy / "conf" / "project" / "demo.yaml").read_text()
    for name, rule in (("Demo", "only by case"), ("123", "letters, digits")):
        (repo_copy / "conf" / "project" / f"{name}.yaml").write_text(conf)
        cfg.write_text(good.replace("  - project@projects.demo: demo\n",
                                    "  - project@projects.demo: demo\n"
                                    f"  - project@projects.{name}: {name}\n"))
        with pytest.raises(UserError, match=rule) as caught:
            compose(repo_copy)
        assert "\n" not in str(caught.value) and "Unsupported" not in str(caught.value)


def test_discovered_folders_get_names_that_pass_the_rule():
    assert project_name("2024") == "project-2024"
    assert project_name("Aiko") == "Aiko"
