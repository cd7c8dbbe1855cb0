#include "loaders/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include "engine/core/check.h"

namespace tessera {
namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp, std::string path)
      : sp_(std::move(sp)), path_(std::move(path)) {
    // A model without BOS/EOS pieces reports -1; Llama-family models use 1 and 2.
    bos_ = sp_->bos_id() >= 0 ? sp_->bos_id() : 1;
    eos_ = sp_->eos_id() >= 0 ? sp_->eos_id() : 2;
  }

  std::vector<int> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    const auto status = sp_->Encode(text, &ids);
    if (!status.ok()) throw Error(path_ + ": cannot encode text: " + status.ToString());
    if (add_bos) ids.insert(ids.begin(), bos_);
    return ids;
  }

  std::string decode(const std::vector<int>& ids) const override {
    std::string text;
    const auto status = sp_->Decode(ids, &text);
    if (!status.ok()) throw Error(path_ + ": cannot decode ids: " + status.ToString());
    return text;
  }

  int vocab_size() const override { return sp_->GetPieceSize(); }
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  int bos_ = 1;
  int eos_ = 2;
};

}  // namespace

std::unique_ptr<Tokenizer> make_sentencepiece_tokenizer(std::string_view bytes, const std::string& path,
                                                        std::string* why) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    *why = status.ToString();
    return nullptr;
  }
  return std::make_unique<SentencePieceTokenizer>(std::move(sp), path);
}

}  // namespace tessera
