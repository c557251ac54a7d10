"""Each project's predict depends on its own model version's folder: compose makes the
folders a project names and says which checkpoints lie outside them."""

from omegaconf import OmegaConf

from backfill.config.project import model_folders


def project(name: str, **parts) -> dict:
    return {"model": {"name": name, **{k: {"architecture": "mlp", "checkpoint": v}
                                       for k, v in parts.items()}}}


def test_compose_makes_each_named_version_folder_and_flags_outside_checkpoints(tmp_path):
    outside = tmp_path / "elsewhere" / "ranker.pt"
    cfg = OmegaConf.create({"projects": {
        "a": {"model": {"name": "baseline", "ranker": {"architecture": "highest_stage"}}},
        "b": project("person", ranker="data/models/person/r.pt", crop="data/models/person/c.pt"),
        "c": project("ext", ranker=str(outside), crop="data/models/ext/c.pt"),
        "d": project("ext", ranker=str(outside), crop="data/models/ext/c.pt"),
        "e": project("../up", ranker="x.pt"),
    }})
    lines = model_folders(tmp_path, cfg)
    assert sorted(p.name for p in (tmp_path / "data" / "models").iterdir()) == [
        "baseline", "ext", "person"]
    assert lines == [f"model version 'ext' reads {outside}, outside data/models/ext/: "
                     "`dvc repro` does not see it change. Move it there and name it so in "
                     "conf/model/ext.yaml."]
    assert not (tmp_path / "up").exists()


def test_no_project_makes_nothing(tmp_path):
    assert model_folders(tmp_path, OmegaConf.create({"projects": {}})) == []
    assert model_folders(tmp_path, OmegaConf.create({})) == []
    assert not (tmp_path / "data").exists()
