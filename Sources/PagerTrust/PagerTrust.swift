import PagerCrypto

/// PagerTrust: keys (the key ring and its file format) and the handshake's key schedule.
enum PagerTrustModule {}
