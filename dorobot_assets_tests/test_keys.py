import pytest

from dorobot_assets.lib.errors import ConfigError
from dorobot_assets.lib.keys import RecordingRegistry, resolve_recording, sanitize_key


@pytest.mark.parametrize(
    "name, key",
    [
        ("My Recording, take 2", "my_recording_take_2"),
        ("so101|pick[0]", "so101_pick_0"),
        ("already_ok-1", "already_ok-1"),
        ("...", "recording"),
        ("Ünïcode  Robot", "n_code_robot"),
    ],
)
def test_sanitize_key(name, key):
    assert sanitize_key(name) == key


def test_registry_resolves_clashes_in_registration_order_and_keeps_them(tmp_path):
    a = tmp_path / "inbox" / "Rec A"
    b = tmp_path / "inbox" / "rec_a"
    a.mkdir(parents=True)
    b.mkdir()
    reg = RecordingRegistry(tmp_path / "work")
    assert reg.register(b) == "rec_a"
    assert reg.register(a) == "rec_a-2"
    # registering again returns the same key; a new registry instance reads the same table
    assert reg.register(b) == "rec_a"
    reg2 = RecordingRegistry(tmp_path / "work")
    assert reg2.lookup("rec_a-2") == a.resolve()
    assert resolve_recording("rec_a-2", tmp_path / "inbox", reg2) == a.resolve()


def test_resolve_falls_back_to_inbox_scan(tmp_path):
    (tmp_path / "inbox" / "Take 1").mkdir(parents=True)
    reg = RecordingRegistry(tmp_path / "work")
    assert resolve_recording("take_1", tmp_path / "inbox", reg) == tmp_path / "inbox" / "Take 1"
    with pytest.raises(ConfigError, match="no recording for partition key 'nope'"):
        resolve_recording("nope", tmp_path / "inbox", reg)
