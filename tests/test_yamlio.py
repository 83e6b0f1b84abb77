"""fcnseg.yamlio: configs read as their authors mean them (YAML 1.2's numbers, no key given twice)."""

import pytest
import yaml

from fcnseg.yamlio import dump_yaml, load_yaml

from .helpers import TINY_TRAIN, refused


def test_numbers_are_read_as_yaml_1_2_reads_them():
    values = load_yaml("seed: 010\nlr: 1e-4\nwhen: 1:30\nmask: 0x1f\ncount: 1_000\nneg: -3\nrate: 2.5\nflag: true")
    # YAML 1.1 (PyYAML) read 010 as octal 8, 1:30 as 90 and 1e-4 as a string.
    assert values == {"seed": 10, "lr": 1e-4, "when": "1:30", "mask": 31, "count": 1000, "neg": -3, "rate": 2.5,
                      "flag": True}
    assert type(values["seed"]) is int and type(values["lr"]) is float


def test_a_key_given_twice_is_refused_a_merge_may_be_overridden():
    with pytest.raises(yaml.YAMLError, match=r"found the key 'iterations' twice \(first on line 1\)"):
        load_yaml("iterations: 100\nseed: 3\niterations: 2\n")
    assert load_yaml("base: &b {lr: 1}\nrun:\n  <<: *b\n  lr: 2\n")["run"] == {"lr": 2}


def test_a_config_with_a_repeated_key_is_one_line_naming_it(tmp_path, capsys):
    """A duplicate key took the last value without a word (found by a hostile review)."""
    config = tmp_path / "dup.yaml"
    config.write_text("iterations: 100\nseed: 3\niterations: 2\n")
    refused(capsys, ["train", "--config", config, *TINY_TRAIN, "--out", tmp_path / "run"], config,
            "'iterations' twice", "line 3")
    assert not (tmp_path / "run").exists()
    refused(capsys, ["train", *TINY_TRAIN, "--set", "dataset_options={a: 1, a: 2}", "--out", tmp_path / "run"],
            "'a' twice")


def test_yes_no_on_off_are_text_true_and_false_are_booleans():
    # A class named "no" or "off" in a class_map was read as False ("class_map names True, not classes of ...").
    values = load_yaml("class_map: {'*': no, yes: on, off: y, n: Off}\na: true\nb: False\nc: TRUE")
    assert values == {"class_map": {"*": "no", "yes": "on", "off": "y", "n": "Off"}, "a": True, "b": False, "c": True}


@pytest.mark.parametrize("value", ["1e5", "12e03", "010", "0x1f", "1:30", "yes", "off", "true", "null", "~", "",
                                   "plain", "a: b", 1e-4, 1e20, 5, -3, None, True, False, [1, "1E-3"], {"no": "1e5"}])
def test_what_dump_yaml_writes_load_yaml_reads_back_as_it_was(value):
    # A run's config.yaml (PyYAML's YAML 1.1 dumper) wrote the split name 1e5 unquoted; --config then read it as
    # the number 100000.0 ("train_split expects a string").
    read = load_yaml(dump_yaml({"key": value}))["key"]
    assert read == value and type(read) is type(value)
