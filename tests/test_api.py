"""The Python API does not change under the user's hands."""

import importlib

import tunelab
from tunelab.core.registry import all_tasks


def test_every_public_name_is_the_same_object_on_every_access():
    importlib.import_module("tunelab.serve.predict")  # what commands import along the way
    importlib.import_module("tunelab.serve.export")
    for name in tunelab.__all__:
        first, second = getattr(tunelab, name), getattr(tunelab, name)
        assert not isinstance(first, type(tunelab)), f"tunelab.{name} is a module"
        if name in tunelab._LAZY:
            assert first is second, name
    assert callable(tunelab.predict) and callable(tunelab.predict)
    for task in all_tasks().values():
        assert callable(getattr(tunelab, task.api_name))


def test_predict_works_twice(tmp_path):
    from tests.conftest import write_topic_splits

    data = write_topic_splits(tmp_path / "d", 10, 4, 4)
    config = tunelab.DataConfig(dataset=str(data))
    from tunelab.tasks.baseline import BaselineConfig

    tunelab.baseline(BaselineConfig(data=config), out=tmp_path / "run")
    for _ in range(2):
        predictions = tunelab.predict(tmp_path / "run", ["sport red film"])
        assert len(predictions) == 1 and predictions[0].label in ("music", "science", "sport")
