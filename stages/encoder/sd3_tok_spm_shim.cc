/*  sd3_tok_spm_shim - the extern "C" face of libsentencepiece for sd3_tok_spm.c
 *
 *  libsentencepiece is the library the T5 reference ids were made with, and the
 *  nmt_nfkc normalization it applies lives in spiece.model as a compiled character map
 *  that this library reads; calling it keeps T5 ids exact. Only this file is C++. No
 *  exception leaves it: failures come back as -1 with a message.  */
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <sentencepiece_processor.h>
#include <string>
#include <vector>

extern "C" {

void *
sd3_tok_spm_shim_new(const void *data, size_t len, char *msg, size_t msg_cap)
{
    try {
        auto *sp = new sentencepiece::SentencePieceProcessor();
        auto st = sp->LoadFromSerializedProto(std::string(static_cast<const char *>(data), len));
        if (!st.ok()) {
            snprintf(msg, msg_cap, "%s", st.ToString().c_str());
            delete sp;
            return nullptr;
        }
        return sp;
    } catch (const std::exception &e) {
        snprintf(msg, msg_cap, "%s", e.what());
    } catch (...) {
        snprintf(msg, msg_cap, "unknown exception");
    }
    return nullptr;
}

void
sd3_tok_spm_shim_free(void *sp)
{
    delete static_cast<sentencepiece::SentencePieceProcessor *>(sp);
}

int
sd3_tok_spm_shim_piece_size(const void *sp)
{
    return static_cast<const sentencepiece::SentencePieceProcessor *>(sp)->GetPieceSize();
}

// The id of piece, or -1 when the model does not hold it (sentencepiece answers unk then).
int
sd3_tok_spm_shim_piece_id(const void *sp, const char *piece)
{
    try {
        auto *p = static_cast<const sentencepiece::SentencePieceProcessor *>(sp);
        int id = p->PieceToId(piece);
        if (id < 0 || p->IdToPiece(id) != piece)
            return -1;
        return id;
    } catch (...) {
        return -1;
    }
}

// Encodes text[0..len) into a malloc'd array (*ids, *n); 0 or -1 with msg.
int
sd3_tok_spm_shim_encode(const void *sp, const char *text, size_t len, int32_t **ids, size_t *n,
                        char *msg, size_t msg_cap)
{
    *ids = nullptr;
    *n = 0;
    try {
        std::vector<int> out;
        auto st = static_cast<const sentencepiece::SentencePieceProcessor *>(sp)->Encode(
            std::string(text, len), &out);
        if (!st.ok()) {
            snprintf(msg, msg_cap, "%s", st.ToString().c_str());
            return -1;
        }
        if (!out.empty()) {
            *ids = static_cast<int32_t *>(malloc(out.size() * sizeof(int32_t)));
            if (!*ids) {
                snprintf(msg, msg_cap, "out of memory");
                return -1;
            }
            for (size_t i = 0; i < out.size(); i++)
                (*ids)[i] = out[i];
        }
        *n = out.size();
        return 0;
    } catch (const std::exception &e) {
        snprintf(msg, msg_cap, "%s", e.what());
    } catch (...) {
        snprintf(msg, msg_cap, "unknown exception");
    }
    return -1;
}

} // extern "C"
