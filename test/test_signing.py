import pytest

from eclm_ros.core.signing import (SCHEME, EdgeKeys, SignatureError, generate_key, key_id, load_private_key,
                                   load_public_key, save_key_pair, sign, upload_bytes, verify)


def test_sign_verify_and_forgery(tmp_path):
    key = generate_key()
    save_key_pair(key, tmp_path / "cloud.pem", tmp_path / "cloud.pub")
    priv, pub = load_private_key(tmp_path / "cloud.pem"), load_public_key(tmp_path / "cloud.pub")
    sig = sign(priv, b"update")
    verify(pub, b"update", sig)
    assert key_id(pub) == key_id(key.public_key())
    with pytest.raises(SignatureError, match="does not match"):
        verify(pub, b"updatE", sig)
    with pytest.raises(SignatureError, match="does not match"):
        verify(generate_key().public_key(), b"update", sig)
    with pytest.raises(SignatureError, match="64 bytes"):
        verify(pub, b"update", sig[:10])


def test_bad_key_files(tmp_path):
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SignatureError, match="cannot load"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(SignatureError, match="cannot load"):
        load_private_key(tmp_path / "missing.pem")


def test_edge_keys_accept_only_what_the_enrolled_edge_signed(tmp_path):
    robot = generate_key()
    save_key_pair(robot, tmp_path / "robot1.key", tmp_path / "robot1.pem")
    keys = EdgeKeys(tmp_path)
    frames = [b"png-1", b"png-2"]
    data = upload_bytes("samples", "robot1", [7, 3, "png"], frames)
    keys.check("robot1", data, SCHEME, sign(robot, data))
    # every field and every frame is bound; frame boundaries too
    for other in (upload_bytes("samples", "robot1", [8, 3, "png"], frames),
                  upload_bytes("samples", "robot1", [7, 3, "png"], [b"png-1", b"png-3"]),
                  upload_bytes("samples", "robot1", [7, 3, "png"], [b"png-1png-2"]),
                  upload_bytes("modules", "robot1", [7, 3, "png"], frames)):
        with pytest.raises(SignatureError, match="does not match"):
            keys.check("robot1", other, SCHEME, sign(robot, data))
    with pytest.raises(SignatureError, match="does not match"):  # another key, same claimed edge
        keys.check("robot1", data, SCHEME, sign(generate_key(), data))
    with pytest.raises(SignatureError, match="unsigned upload"):
        keys.check("robot1", data, "", b"")
    for stranger in ("robot2", "../robot1", ""):
        with pytest.raises(SignatureError, match="no enrolled key"):
            keys.check(stranger, data, SCHEME, sign(robot, data))
    with pytest.raises(SignatureError, match="does not exist"):
        EdgeKeys(tmp_path / "missing")
