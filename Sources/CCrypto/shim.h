// The system's libcrypto (OpenSSL 3, Debian's libssl-dev): HMAC, HKDF, X25519, AES-256-GCM,
// constant-time comparison and the random generator. Only PagerCrypto imports this module.
#ifndef PAGER_CCRYPTO_SHIM_H
#define PAGER_CCRYPTO_SHIM_H

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

// OSSL_PARAM arrays point at their keys and values, so they are built here, in C, where those
// live as long as the call that reads them; Swift would need a pointer dance per parameter.

// An OSSL_PARAM octet string must not have a NULL buffer, even when empty (OpenSSL 3.0's
// OSSL_PARAM_get_octet_string rejects it), and Swift hands NULL for an empty array.
static inline void *pager_nonnull_bytes(const unsigned char *bytes) {
    static unsigned char empty;
    return bytes != NULL ? (void *)bytes : (void *)&empty;
}

// EVP_MAC_init for HMAC with SHA-256 as its digest.
static inline int pager_hmac_sha256_init(EVP_MAC_CTX *ctx, const unsigned char *key, size_t key_len) {
    OSSL_PARAM params[2];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    return EVP_MAC_init(ctx, pager_nonnull_bytes(key), key_len, params);
}

// EVP_KDF_derive for HKDF-SHA256 in `mode` (EVP_KDF_HKDF_MODE_EXTRACT_ONLY or _EXPAND_ONLY).
// `key` is the input keying material for extract, the pseudorandom key for expand; an empty
// salt is left out, which HKDF reads as HashLen zero bytes (RFC 5869 section 2.2).
static inline int pager_hkdf_sha256(EVP_KDF_CTX *ctx, int mode,
                                    const unsigned char *salt, size_t salt_len,
                                    const unsigned char *key, size_t key_len,
                                    const unsigned char *info, size_t info_len,
                                    unsigned char *out, size_t out_len) {
    OSSL_PARAM params[6];
    OSSL_PARAM *p = params;
    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    *p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, pager_nonnull_bytes(key), key_len);
    if (salt_len > 0) {
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, pager_nonnull_bytes(salt), salt_len);
    }
    if (info_len > 0) {
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, pager_nonnull_bytes(info), info_len);
    }
    *p = OSSL_PARAM_construct_end();
    return EVP_KDF_derive(ctx, out, out_len, params);
}

#endif
