package android.content.res;
public class AssetFileDescriptor implements java.io.Closeable {
  private final java.io.FileInputStream in; private final long length;
  public AssetFileDescriptor(java.io.FileInputStream in, long length) { this.in = in; this.length = length; }
  public java.io.FileDescriptor getFileDescriptor() { try { return in.getFD(); } catch (java.io.IOException e) { throw new RuntimeException(e); } }
  public long getStartOffset() { return 0; }
  public long getDeclaredLength() { return length; }
  public void close() throws java.io.IOException { in.close(); }
}
