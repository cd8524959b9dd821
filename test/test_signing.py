import pytest

from eclm_ros.core.signing import (SignatureError, generate_key, key_id, load_private_key, load_public_key,
                                   save_key_pair, sign, verify)


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
