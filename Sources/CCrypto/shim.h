// The system's libcrypto (OpenSSL 3, Debian's libssl-dev): HMAC, HKDF, X25519, AES-256-GCM,
// constant-time comparison and the random generator. Only PagerCrypto imports this module.
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
