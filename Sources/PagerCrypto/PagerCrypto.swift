import CCrypto

/// PagerCrypto: the primitives the pager's authentication and record protection use, over the
/// system's libcrypto (OpenSSL 3). Nothing else in the package imports CCrypto.
enum PagerCryptoModule {}
