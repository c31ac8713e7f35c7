package org.tensorflow.lite;
import java.nio.ByteBuffer;
import java.util.Map;
/** Stub with the real class's signatures; calls go to a test backend (JVM checks only). */
public final class Interpreter implements AutoCloseable {
  public interface Backend {
    String[] getSignatureKeys();
    String[] getSignatureInputs(String key);
    String[] getSignatureOutputs(String key);
    Tensor getInputTensorFromSignature(String inputName, String signatureKey);
    Tensor getOutputTensorFromSignature(String outputName, String signatureKey);
    void runSignature(Map<String, Object> inputs, Map<String, Object> outputs, String signatureKey);
  }
  public static Backend backend;
  public static class Options { public Options() {} public Options setNumThreads(int n) { return this; } }
  public Interpreter(ByteBuffer model, Options options) { if (backend == null) throw new IllegalStateException("no backend"); }
  public String[] getSignatureKeys() { return backend.getSignatureKeys(); }
  public String[] getSignatureInputs(String key) { return backend.getSignatureInputs(key); }
  public String[] getSignatureOutputs(String key) { return backend.getSignatureOutputs(key); }
  public Tensor getInputTensorFromSignature(String inputName, String signatureKey) { return backend.getInputTensorFromSignature(inputName, signatureKey); }
  public Tensor getOutputTensorFromSignature(String outputName, String signatureKey) { return backend.getOutputTensorFromSignature(outputName, signatureKey); }
  public void runSignature(Map<String, Object> inputs, Map<String, Object> outputs, String signatureKey) {
    // The real NativeInterpreterWrapper.runSignature check (TF 2.x / LiteRT sources).
    if (inputs == null || inputs.isEmpty()) throw new IllegalArgumentException("Input error: Inputs should not be null or empty.");
    if (outputs == null) throw new IllegalArgumentException("Input error: Outputs should not be null.");
    backend.runSignature(inputs, outputs, signatureKey);
  }
  public void close() {}
}
