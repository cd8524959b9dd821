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


def test_keys_command_fills_a_key_ring_the_nodes_read_and_keeps_what_exists(tmp_path, capsys):
    from eclm_ros.cli import main
    from eclm_ros.core.signing import KeyRing, cloud_keys, edge_keys, key_id

    ring = KeyRing.at(tmp_path / "ring")
    assert main(["keys", "--dir", str(ring.root), "init", "robot1", "robot2"]) == 0
    cloud_pub = ring.cloud_public.read_bytes()
    assert main(["keys", "--dir", str(ring.root), "init", "robot3"]) == 0  # again: kept, one more edge
    assert ring.cloud_public.read_bytes() == cloud_pub
    out = capsys.readouterr().out
    assert "cloud key kept" in out and "edge robot3 enrolled" in out and "copy edge-robot1.pem" in out
    assert oct(ring.cloud_private.stat().st_mode & 0o777) == "0o600"
    public, private = edge_keys(ring, "robot1")
    key, enrolled = cloud_keys(ring)
    assert key_id(public) == key_id(key.public_key())
    data = b"an upload"
    enrolled.check("robot1", data, "ed25519", private.sign(data))  # the cloud trusts robot1's own key
    assert main(["keys", "--dir", str(ring.root), "revoke", "robot2"]) == 0
    assert not ring.edge_public("robot2").exists()
    with pytest.raises(SystemExit) as exc:
        main(["keys", "--dir", str(ring.root), "revoke", "robot2"])
    assert exc.value.code == 1 and "not enrolled: robot2" in capsys.readouterr().err
    ring.cloud_public.write_text("damaged")
    with pytest.raises(SystemExit) as exc:
        main(["keys", "--dir", str(ring.root), "list"])
    assert exc.value.code == 1 and "cannot load public key" in capsys.readouterr().err


def test_nodes_without_keys_are_told_the_command_unless_in_lab_mode(tmp_path, monkeypatch):
    from eclm_ros.core.signing import KEYS_ENV, KeyRing, SignatureError, cloud_keys, edge_keys

    monkeypatch.setenv(KEYS_ENV, str(tmp_path / "env_ring"))
    ring = KeyRing.at("")
    assert ring.root == tmp_path / "env_ring"
    with pytest.raises(SignatureError, match=r"eclm-ros keys init robot1.*insecure: true"):
        edge_keys(ring, "robot1")
    with pytest.raises(SignatureError, match=r"eclm-ros keys init.*insecure: true"):
        cloud_keys(ring)
    assert edge_keys(ring, "robot1", insecure=True) == (None, None)
    assert cloud_keys(ring, insecure=True) == (None, None)
    ring.init_cloud()
    key, enrolled = cloud_keys(ring, insecure=True)  # lab mode still uses the keys it finds
    assert key is not None and enrolled is not None
    with pytest.raises(SignatureError, match="this edge's private key"):
        edge_keys(ring, "robot1")  # the cloud's public key is there, robot1 is not enrolled
    with pytest.raises(SignatureError, match="cannot name a key file"):
        ring.enrol("../evil")
